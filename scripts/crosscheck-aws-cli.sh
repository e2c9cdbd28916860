#!/usr/bin/env bash
# Cross-check: AWS CLI v2's own `aws ec2-instance-connect open-tunnel` client
# against the test bed's EC2 Instance Connect Endpoint stand-in
# (tests/support/eice.rs), to show the stand-in behaves like the service for
# AWS's own client, not only for eic-connect:
#
#   api        the CLI's EC2 client reads DescribeInstanceConnectEndpoints
#   echo       1 MiB through the tunnel to port 3389 (echo) comes back byte
#              for byte; the CLI's frames stay within 65,000 bytes; the
#              presigned URL and its signature are accepted; the close at
#              maxTunnelDuration (1000) is taken as a clean end (exit 0)
#   ssh        real ssh through `open-tunnel --instance-id` as ProxyCommand
#              (instance and endpoint discovery through the EC2 stand-in, a
#              key pushed with `aws ec2-instance-connect send-ssh-public-key`),
#              bytes through sshd compared
#   listener   `open-tunnel --local-port`: bytes compared, the client's close
#   close      a close frame with code 1011 and a reason: the CLI fails and
#              shows the reason
#   text       a text frame: the CLI refuses it
#   refused    a handshake the stand-in refuses on its own (an address with
#              no running instance) and an injected AccessDeniedException:
#              the CLI reads the JSON body (framed by Content-Length) and
#              shows the service's message
#   signature  a wrong secret key: refused with InvalidSignatureException,
#              and no other request had a signature failure
#
# Not part of `.ci/run` or `cargo test`: it needs AWS CLI v2 built from its
# public source (the aws/aws-cli repository on GitHub, branch v2), and
# Python 3.9 or later with pip and access to a package index for the CLI's
# dependencies.
#
#   git clone --branch v2 https://github.com/aws/aws-cli /path/to/aws-cli
#   scripts/crosscheck-aws-cli.sh /path/to/aws-cli
#
# The argument (or AWS_CLI_V2) is either an aws-cli v2 checkout, which is
# pip-installed into a virtualenv outside the repository
# (AWSCLI_VENV, default ${XDG_CACHE_HOME:-~/.cache}/eic-connect/awscli-venv)
# unless that one already holds it, or an `aws` v2 installed with pip (a
# script run by Python; the bundled installer's frozen binary cannot load
# the wrapper below).
#
# AWS's code is not modified. The CLI opens the tunnel with awscrt to
# <endpoint DNS name>:443 and trusts the system's CAs; a small wrapper,
# written into the bed's directory, starts the CLI's entry point after
# making awscrt's websocket connect go to the stand-in's 127.0.0.1:PORT
# for that DNS name (the TLS server name, Host header and signed host stay
# the DNS name) with the bed's test CA as trust store. EC2 and EC2
# Instance Connect API calls go to the bed through AWS_ENDPOINT_URL.
#
# Prints PASS/FAIL per check; exits 1 if any failed, 2 if it could not run.

set -u

if [ -z "${TESTBED_DIR:-}" ]; then
    # ---- outside the bed: find or build the AWS CLI, then start a bed.
    src=${1:-${AWS_CLI_V2:-}}
    if [ -z "$src" ]; then
        echo "usage: $0 AWS_CLI_V2_CHECKOUT_OR_AWS (or set AWS_CLI_V2)" >&2
        exit 2
    fi
    if [ -d "$src" ]; then
        src=$(cd "$src" && pwd)
        if [ ! -f "$src/awscli/clidriver.py" ]; then
            echo "$src is not an aws-cli checkout" >&2
            exit 2
        fi
        venv=${AWSCLI_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/eic-connect/awscli-venv}
        py=$venv/bin/python
        if ! "$py" -c 'import awscli.clidriver' 2>/dev/null; then
            echo "installing $src into $venv" >&2
            python3 -m venv "$venv" && "$py" -m pip install --quiet "$src" || exit 2
        fi
    else
        aws=$(command -v "$src") || { echo "no $src" >&2; exit 2; }
        py=$(sed -n '1s/^#! *//p' "$aws" | awk '{print $1}')
        if [ -z "$py" ] || ! "$py" -c 'import awscli.clidriver' 2>/dev/null; then
            echo "$aws is not a Python-run AWS CLI (see the header of $0)" >&2
            exit 2
        fi
    fi
    version=$("$py" -c 'import awscli; print(awscli.__version__)') || exit 2
    case $version in
        2.*) ;;
        *) echo "AWS CLI $version is not v2" >&2; exit 2 ;;
    esac
    mkdir -p /run/sshd 2>/dev/null || true
    cd "$(dirname "$0")/.." || exit 2
    cargo build --quiet --example testbed || exit 2
    exec cargo run --quiet --example testbed -- --exec "$PWD/scripts/crosscheck-aws-cli.sh" "$py" "$version"
fi

# ---- inside the bed (testbed --exec): the checks.
py=$1
version=$2
work=$TESTBED_DIR/xcheck
mkdir -p "$work"
wrapper=$work/aws-bed.py
cat >"$wrapper" <<'EOF'
# Starts the AWS CLI with the endpoint's DNS name:443 mapped to the test
# bed's EC2 Instance Connect Endpoint stand-in, trusting the bed's CA.
import os
import sys

import awscrt.websocket
from awscrt.io import ClientTlsContext, TlsContextOptions

_DNS = {os.environ["TESTBED_EICE_DNS_NAME"]}
_HOST, _PORT = os.environ["TESTBED_EICE_ADDR"].rsplit(":", 1)
_connect = awscrt.websocket.connect


def _to_bed(**kwargs):
    host = kwargs["host"]
    if host in _DNS and kwargs.get("port") in (None, 443):
        opts = TlsContextOptions()
        opts.override_default_trust_store_from_path(
            None, os.environ["TESTBED_CA_BUNDLE"]
        )
        tls = ClientTlsContext(opts).new_connection_options()
        tls.set_server_name(host)
        kwargs.update(host=_HOST, port=int(_PORT), tls_connection_options=tls)
    return _connect(**kwargs)


awscrt.websocket.connect = _to_bed

import awscli.clidriver  # noqa: E402

sys.exit(awscli.clidriver.main())
EOF

export TESTBED_CA_BUNDLE=$AWS_CA_BUNDLE
export AWS_DEFAULT_REGION=$AWS_REGION AWS_PAGER= AWS_CLI_AUTO_PROMPT=off
unset HTTP_PROXY HTTPS_PROXY http_proxy https_proxy
aws() { "$py" "$wrapper" "$@"; }
id=$TESTBED_EICE_ID
ip=$TESTBED_PRIVATE_IP
failed=0

echo "AWS CLI $version ($py) against the stand-in at $TESTBED_EICE_ADDR for $TESTBED_EICE_DNS_NAME"

pass() { printf 'PASS  %-10s %s\n' "$1" "$2"; }
fail() {
    printf 'FAIL  %-10s %s\n' "$1" "$2"
    failed=1
    for f in "${@:3}"; do
        [ -s "$f" ] && sed 's/^/        | /' "$f" | tail -n 12
    done
}

# Lines the bed appended to $TESTBED_EVENTS since `mark`.
mark() { seen=$(wc -l <"$TESTBED_EVENTS"); }
since() { tail -n +"$((seen + 1))" "$TESTBED_EVENTS"; }
# Waits (up to 10 s) for a line since `mark` matching an extended regex.
event() {
    local i
    for i in $(seq 100); do
        since | grep -E -m1 -- "$1" && return 0
        sleep 0.1
    done
    return 1
}
control() {
    mark
    echo "$1" >>"$TESTBED_CONTROL"
    event "^ok $1\$" >/dev/null || { echo "the bed did not take: $1" >&2; exit 2; }
}
# The value of key=VALUE in an event line.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

head -c 1048576 /dev/urandom >"$work/in"
in_sha=$(sha256sum <"$work/in" | cut -d' ' -f1)

# ---- api
got=$(aws ec2 describe-instance-connect-endpoints --instance-connect-endpoint-ids "$id" \
    --query 'InstanceConnectEndpoints[0].DnsName' --output text 2>"$work/api.err")
if [ "$got" = "$TESTBED_EICE_DNS_NAME" ]; then
    pass api "describe-instance-connect-endpoints: $got"
else
    fail api "describe-instance-connect-endpoints gave '$got'" "$work/api.err"
fi

# ---- echo
mark
timeout 60 "$py" "$wrapper" ec2-instance-connect open-tunnel --instance-connect-endpoint-id "$id" \
    --private-ip-address "$ip" --remote-port 3389 --max-tunnel-duration 3 \
    <"$work/in" >"$work/echo.out" 2>"$work/echo.err"
rc=$?
t=$(event '^tunnel .* port=3389 ') || t=
if [ $rc = 0 ] && cmp -s "$work/in" "$work/echo.out" && [ -n "$t" ] \
    && [ "$(field up "$t")" = 1048576 ] && [ "$(field down "$t")" = 1048576 ] \
    && [ "$(field largest_frame "$t")" -le 65000 ] && [ "$(field server_close "$t")" = 1000 ] \
    && [ "$(field violations "$t")" = 0 ]; then
    pass echo "1 MiB back byte for byte, exit 0 on the server's close 1000; largest frame $(field largest_frame "$t"), client answered close $(field client_close "$t")"
else
    fail echo "exit $rc, $(wc -c <"$work/echo.out") bytes back, bed: ${t:-no tunnel}" "$work/echo.err"
fi

# ---- ssh
ssh-keygen -q -t ed25519 -N '' -f "$work/key" -C crosscheck
mark
pushed=$(aws ec2-instance-connect send-ssh-public-key --instance-id "$TESTBED_PRIVATE_ID" \
    --instance-os-user "$TESTBED_OS_USER" --ssh-public-key "file://$work/key.pub" \
    --query Success --output text 2>"$work/push.err")
proxy="'$py' '$wrapper' ec2-instance-connect open-tunnel --instance-id $TESTBED_PRIVATE_ID"
got=$(timeout 60 ssh -F /dev/null -i "$work/key" -o IdentitiesOnly=yes -o BatchMode=yes \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
    -o ProxyCommand="$proxy" -l "$TESTBED_OS_USER" db-1 sha256sum <"$work/in" 2>"$work/ssh.err" \
    | cut -d' ' -f1)
t=$(event '^tunnel .* port=22 ') || t=
if [ "$pushed" = True ] && [ "$got" = "$in_sha" ] && [ -n "$t" ]; then
    pass ssh "sha256sum through sshd matches; bed: closed_by=$(field closed_by "$t") server_close=$(field server_close "$t") client_close=$(field client_close "$t")"
else
    fail ssh "push '$pushed', sha '$got', bed: ${t:-no tunnel}" "$work/push.err" "$work/ssh.err"
fi

# ---- listener
port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
aws ec2-instance-connect open-tunnel --instance-connect-endpoint-id "$id" --private-ip-address "$ip" \
    --remote-port 3389 --local-port "$port" >"$work/listener.out" 2>"$work/listener.err" &
listener=$!
mark
"$py" - "$port" "$work/in" >"$work/listener.client" 2>&1 <<'EOF'
import socket, sys, time
port, path = int(sys.argv[1]), sys.argv[2]
data = open(path, "rb").read()[:200_000]
for _ in range(100):
    try:
        s = socket.create_connection(("localhost", port))
        break
    except OSError:
        time.sleep(0.1)
s.sendall(data)
got = b""
s.settimeout(20)
while len(got) < len(data):
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.close()
print("same" if got == data else f"differ: {len(got)} of {len(data)} bytes")
EOF
t=$(event '^tunnel .* port=3389 ') || t=
kill "$listener" 2>/dev/null
wait "$listener" 2>/dev/null
if [ "$(cat "$work/listener.client")" = same ] && [ -n "$t" ] && [ "$(field closed_by "$t")" = Client ]; then
    pass listener "200,000 bytes back byte for byte; the CLI closed with code $(field client_close "$t")"
else
    fail listener "client: $(cat "$work/listener.client"), bed: ${t:-no tunnel}" "$work/listener.out" "$work/listener.err"
fi

# ---- close
reason="crosscheck: the instance went away"
control "close-next-tunnel 1011 $reason"
timeout 30 "$py" "$wrapper" ec2-instance-connect open-tunnel --instance-connect-endpoint-id "$id" \
    --private-ip-address "$ip" --remote-port 3389 </dev/null >/dev/null 2>"$work/close.err"
rc=$?
t=$(event '^tunnel .* server_close=1011 ') || t=
if [ $rc != 0 ] && [ $rc != 124 ] && grep -qF "$reason" "$work/close.err" && [ -n "$t" ]; then
    pass close "exit $rc, shows \"$(grep -F "$reason" "$work/close.err" | head -n1)\"; answered close $(field client_close "$t")"
else
    fail close "exit $rc, bed: ${t:-no tunnel}" "$work/close.err"
fi

# ---- text
control "text-frame-next-tunnel"
timeout 30 "$py" "$wrapper" ec2-instance-connect open-tunnel --instance-connect-endpoint-id "$id" \
    --private-ip-address "$ip" --remote-port 3389 </dev/null >/dev/null 2>"$work/text.err"
rc=$?
if [ $rc != 0 ] && [ $rc != 124 ] && grep -q "Received invalid data from server" "$work/text.err"; then
    pass text "exit $rc, \"$(grep -m1 "Received invalid data" "$work/text.err")\""
else
    fail text "exit $rc" "$work/text.err"
fi

# ---- refused: the stand-in's own refusal, then an injected one
nobody=127.0.1.250
mark
timeout 30 "$py" "$wrapper" ec2-instance-connect open-tunnel --instance-connect-endpoint-id "$id" \
    --private-ip-address "$nobody" --remote-port 22 </dev/null >/dev/null 2>"$work/refused.err"
rc=$?
r=$(event '^refused status=400 code=InvalidParameter ') || r=
msg="privateIpAddress $nobody is not a running instance"
if [ $rc != 0 ] && [ -n "$r" ] && grep -qF "$msg" "$work/refused.err"; then
    pass refused "400 InvalidParameter, exit $rc, shows the body: $(grep -F "$msg" "$work/refused.err" | head -n1 | sed 's/.* - ERROR - //'), then: $(tail -n1 "$work/refused.err")"
else
    fail refused "exit $rc, bed: ${r:-no refusal}" "$work/refused.err"
fi

denied="User: arn:aws:iam::123456789012:user/crosscheck is not authorized to perform: ec2-instance-connect:OpenTunnel"
control "fail-next-tunnel AccessDeniedException $denied"
timeout 30 "$py" "$wrapper" ec2-instance-connect open-tunnel --instance-connect-endpoint-id "$id" \
    --private-ip-address "$ip" --remote-port 22 </dev/null >/dev/null 2>"$work/denied.err"
rc=$?
r=$(event '^refused status=403 code=AccessDeniedException ') || r=
if [ $rc != 0 ] && [ -n "$r" ] && grep -qF "$denied" "$work/denied.err"; then
    pass refused "403 AccessDeniedException (injected), exit $rc, shows the service's message"
else
    fail refused "exit $rc, bed: ${r:-no refusal}" "$work/denied.err"
fi

# ---- signature: none failed so far; a wrong secret key is refused
if grep -q '^signature-failure' "$TESTBED_EVENTS"; then
    fail signature "signature failures before the wrong key: $(grep '^signature-failure' "$TESTBED_EVENTS" | head -n3)"
fi
mark
AWS_SECRET_ACCESS_KEY=not-the-secret timeout 30 "$py" "$wrapper" ec2-instance-connect open-tunnel \
    --instance-connect-endpoint-id "$id" --instance-connect-endpoint-dns-name "$TESTBED_EICE_DNS_NAME" \
    --private-ip-address "$ip" --remote-port 22 </dev/null >/dev/null 2>"$work/signature.err"
rc=$?
r=$(event '^refused status=403 code=InvalidSignatureException ') || r=
if [ $rc != 0 ] && [ -n "$r" ] && grep -q InvalidSignatureException "$work/signature.err"; then
    pass signature "every presigned URL before verified; a wrong secret: 403 InvalidSignatureException, shown, exit $rc"
else
    fail signature "exit $rc, bed: ${r:-no refusal}" "$work/signature.err"
fi

if [ $failed = 0 ]; then
    echo "all checks passed"
else
    echo "some checks FAILED (bed events: $TESTBED_EVENTS)"
fi
exit $failed
