#!/bin/sh
# The GitHub Action's logic (action.yml at the repository root runs it), a
# plain POSIX sh script so that it runs, and is tested, outside GitHub too.
#
#   scripts/action.sh install [setup]   download, verify and install eic-connect
#   scripts/action.sh setup             write the ssh-config block, pre-connect
#   scripts/action.sh cleanup           stop connections, remove the block
#   scripts/action.sh url               print the archive URL it would fetch
#
# Subcommands run in the order given, in one process: `install setup` sets
# the block up with the eic-connect just installed.
#
# Settings come from the environment (action.yml maps its inputs onto them):
#
#   EIC_ACTION_VERSION        version to install (default: the version in this
#                             checkout's Cargo.toml, i.e. the action's own)
#   EIC_ACTION_TARGET         Rust target triple of the archive (default: the
#                             runner's, below)
#   EIC_ACTION_REPOSITORY     OWNER/NAME whose GitHub releases hold the
#                             archives (default: the action's repository)
#   EIC_ACTION_DOWNLOAD_URL   the directory URL holding this version's archives
#                             instead of the GitHub release: for mirrors and
#                             tests (https://, http:// or file://)
#   EIC_ACTION_INSTALL_DIR    where the binary goes (default:
#                             $RUNNER_TOOL_CACHE/eic-connect/VERSION/TARGET,
#                             else ~/.local/bin)
#   EIC_ACTION_BIN            the eic-connect to set up with when `install`
#                             did not run (default: eic-connect on PATH)
#   EIC_ACTION_REGION, EIC_ACTION_PROFILE, EIC_ACTION_CONNECT,
#   EIC_ACTION_OS_USER, EIC_ACTION_PREFIX
#                             go into the block (eic-connect's --region,
#                             --profile, --connect, ssh-config's --os-user,
#                             --prefix)
#   EIC_ACTION_SSH_CONFIG_ARGS  more `eic-connect ssh-config` options, split
#                             on white space
#   EIC_ACTION_TARGETS        hosts to pre-connect (`ssh HOST true`), separated
#                             by white space or commas: i-0abc…, eic-web-1,
#                             user@eic-web-1
#   EIC_ACTION_SSH_CONFIG     the ssh config file (default ~/.ssh/config; a
#                             leading ~/ is $HOME)
#
# Linux x86_64 and aarch64 get the static musl build (it runs in any
# container), macOS x86_64 and arm64 the apple-darwin builds. Archives are
# named eic-connect-vVERSION-TARGET.tar.gz with a .sha256 beside each, as
# .github/workflows/release.yml makes them; an archive whose SHA-256 differs
# from its .sha256 is refused and nothing is installed.
#
# In GitHub Actions ($GITHUB_ACTIONS=true) errors are also shown as
# annotations, the install directory is added to $GITHUB_PATH and the
# outputs (version, path, ssh-config) go to $GITHUB_OUTPUT.
set -eu
# No globbing: host names like web-* are passed on as they are.
set -f

BEGIN_MARK='# >>> eic-connect action >>>'
END_MARK='# <<< eic-connect action <<<'
TARGETS_TAG='# eic-connect action: pre-connected:'

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
installed_bin=

say() { printf 'eic-connect action: %s\n' "$*" >&2; }

# die MESSAGE [HINT...]: one error line, hint lines, exit 1.
die() {
  msg=$1
  shift
  printf 'eic-connect action: error: %s\n' "$msg" >&2
  for h in "$@"; do printf 'hint: %s\n' "$h" >&2; done
  if [ "${GITHUB_ACTIONS:-}" = true ]; then
    # Workflow commands take %, CR and LF escaped.
    esc=$(printf '%s' "$msg" | sed -e 's/%/%25/g' | tr '\n' ' ')
    printf '::error title=eic-connect::%s\n' "$esc" >&2
  fi
  exit 1
}

output() {
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    printf '%s=%s\n' "$1" "$2" >>"$GITHUB_OUTPUT"
  fi
}

# ------------------------------------------------------------------ install

version() {
  v=${EIC_ACTION_VERSION:-}
  if [ -z "$v" ]; then
    [ -f "$root/Cargo.toml" ] ||
      die "no version given and no Cargo.toml beside $here" \
        "set the action's \`version\` input (EIC_ACTION_VERSION), e.g. 0.1.0"
    v=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$root/Cargo.toml" | head -n 1)
  fi
  v=${v#v}
  case $v in
    '' | *[!0-9A-Za-z.+-]*) die "not a version: \"$v\"" "use a release version like 0.1.0" ;;
  esac
  printf '%s\n' "$v"
}

target() {
  if [ -n "${EIC_ACTION_TARGET:-}" ]; then
    printf '%s\n' "$EIC_ACTION_TARGET"
    return
  fi
  os=$(uname -s)
  arch=$(uname -m)
  case $arch in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) die "no eic-connect release for the machine type $arch" \
      "release archives exist for x86_64 and aarch64 (arm64)" ;;
  esac
  case $os in
    Linux) printf '%s-unknown-linux-musl\n' "$arch" ;;
    Darwin) printf '%s-apple-darwin\n' "$arch" ;;
    *) die "no eic-connect release for $os runners" \
      "use a Linux or macOS runner" ;;
  esac
}

repository() {
  if [ -n "${EIC_ACTION_REPOSITORY:-}" ]; then
    printf '%s\n' "$EIC_ACTION_REPOSITORY"
    return
  fi
  # A remote action is checked out at RUNNER/_actions/OWNER/NAME/REF.
  case ${GITHUB_ACTION_PATH:-} in
    */_actions/*/*/*)
      rest=${GITHUB_ACTION_PATH#*/_actions/}
      owner=${rest%%/*}
      rest=${rest#*/}
      printf '%s/%s\n' "$owner" "${rest%%/*}"
      return
      ;;
  esac
  # `uses: ./`: the action is the workflow's own repository.
  if [ -n "${GITHUB_REPOSITORY:-}" ]; then
    printf '%s\n' "$GITHUB_REPOSITORY"
    return
  fi
  die "cannot tell which repository's releases hold eic-connect" \
    "set EIC_ACTION_REPOSITORY=OWNER/NAME, or EIC_ACTION_DOWNLOAD_URL for a mirror"
}

archive_name() { printf 'eic-connect-v%s-%s.tar.gz\n' "$1" "$2"; }

base_url() {
  if [ -n "${EIC_ACTION_DOWNLOAD_URL:-}" ]; then
    printf '%s\n' "${EIC_ACTION_DOWNLOAD_URL%/}"
  else
    printf 'https://github.com/%s/releases/download/v%s\n' "$(repository)" "$1"
  fi
}

fetch() {
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL --retry 3 --connect-timeout 20 -o "$2" "$1" 2>"$2.err" && return 0
  elif command -v wget >/dev/null 2>&1; then
    wget -q -t 3 -T 20 -O "$2" "$1" 2>"$2.err" && return 0
  else
    die "neither curl nor wget is installed" "install curl"
  fi
  why=$(tr '\n' ' ' <"$2.err")
  die "could not download $1${why:+: $why}" \
    "check that release v$ver has this archive, or set the \`version\` input" \
    "a mirror or a local copy can be named with EIC_ACTION_DOWNLOAD_URL"
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | awk '{print $1}'
  elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256 "$1" | awk '{print $1}'
  elif command -v openssl >/dev/null 2>&1; then
    openssl dgst -sha256 "$1" | awk '{print $NF}'
  else
    die "no SHA-256 tool (sha256sum, shasum or openssl) to verify the download"
  fi
}

do_url() {
  ver=$(version)
  tgt=$(target)
  base=$(base_url "$ver")
  printf '%s/%s\n' "$base" "$(archive_name "$ver" "$tgt")"
}

do_install() {
  ver=$(version)
  tgt=$(target)
  name=$(archive_name "$ver" "$tgt")
  url="$(base_url "$ver")/$name"
  dir=${EIC_ACTION_INSTALL_DIR:-}
  if [ -z "$dir" ]; then
    if [ -n "${RUNNER_TOOL_CACHE:-}" ]; then
      dir="$RUNNER_TOOL_CACHE/eic-connect/$ver/$tgt"
    else
      dir="$HOME/.local/bin"
    fi
  fi

  tmp=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/eic-connect-install.XXXXXX")
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -rf '$tmp'" EXIT
  say "downloading $url"
  fetch "$url" "$tmp/$name"
  fetch "$url.sha256" "$tmp/$name.sha256"

  # `sha256sum` format: the hash, then the file name.
  want=$(awk 'NR == 1 {print $1}' "$tmp/$name.sha256" | tr 'A-F' 'a-f')
  case $want in
    *[!0-9a-f]* | '') die "$name.sha256 does not hold a SHA-256 checksum" \
      "the release is damaged: nothing was installed" ;;
  esac
  [ ${#want} -eq 64 ] || die "$name.sha256 does not hold a SHA-256 checksum" \
    "the release is damaged: nothing was installed"
  got=$(sha256_of "$tmp/$name")
  if [ "$got" != "$want" ]; then
    die "checksum mismatch for $name: expected $want (from $name.sha256), got $got; nothing was installed" \
      "the download is corrupt or was altered on the way; retry, and if it persists do not use this archive"
  fi
  say "SHA-256 verified: $got"

  mkdir "$tmp/x"
  tar -xzf "$tmp/$name" -C "$tmp/x" ||
    die "could not unpack $name" "nothing was installed"
  bin="$tmp/x/${name%.tar.gz}/eic-connect"
  [ -f "$bin" ] || bin="$tmp/x/eic-connect"
  [ -f "$bin" ] || die "$name holds no eic-connect binary" "nothing was installed"
  chmod 755 "$bin"
  reported=$("$bin" --version 2>&1) ||
    die "the eic-connect in $name does not run here ($tgt): $reported" \
      "set the \`target\` input if the runner needs another build"
  [ "$reported" = "eic-connect $ver" ] ||
    die "$name holds \"$reported\", not eic-connect $ver" "nothing was installed"

  mkdir -p "$dir"
  # Into place in one rename, so a concurrent reader never sees half a file.
  cp "$bin" "$dir/.eic-connect.$$"
  mv -f "$dir/.eic-connect.$$" "$dir/eic-connect"
  rm -rf "$tmp"
  trap - EXIT
  installed_bin="$dir/eic-connect"
  say "installed $reported ($tgt) as $installed_bin"

  if [ -n "${GITHUB_PATH:-}" ]; then
    printf '%s\n' "$dir" >>"$GITHUB_PATH"
  fi
  output version "$ver"
  output path "$installed_bin"
}

# -------------------------------------------------------------------- setup

ssh_config_file() {
  f=${EIC_ACTION_SSH_CONFIG:-$HOME/.ssh/config}
  case $f in
    \~/*) f="$HOME/${f#??}" ;;
  esac
  printf '%s\n' "$f"
}

eic_bin() {
  if [ -n "$installed_bin" ]; then
    printf '%s\n' "$installed_bin"
  elif [ -n "${EIC_ACTION_BIN:-}" ]; then
    printf '%s\n' "$EIC_ACTION_BIN"
  elif command -v eic-connect >/dev/null 2>&1; then
    command -v eic-connect
  else
    die "eic-connect is not installed" \
      "run the action with \`install: true\` (the default), or put eic-connect on PATH"
  fi
}

# The config file without our block (exit 3 for a begin mark with no end).
without_block() {
  [ -f "$1" ] || return 0
  awk -v b="$BEGIN_MARK" -v e="$END_MARK" '
    $0 == b { inside = 1; next }
    inside && $0 == e { inside = 0; next }
    !inside { print }
    END { if (inside) exit 3 }
  ' "$1"
}

# Rewrites the file in place (keeping its owner, mode and any symlink).
write_config() {
  cat "$2" >"$1"
}

# The targets, one space between each.
targets_list() {
  printf '%s' "${EIC_ACTION_TARGETS:-}" | tr ',\t\r\n' '    ' | tr -s ' ' |
    sed -e 's/^ //' -e 's/ $//'
}

do_setup() {
  bin=$(eic_bin)
  config=$(ssh_config_file)
  set --
  [ -n "${EIC_ACTION_REGION:-}" ] && set -- "$@" --region "$EIC_ACTION_REGION"
  [ -n "${EIC_ACTION_PROFILE:-}" ] && set -- "$@" --profile "$EIC_ACTION_PROFILE"
  [ -n "${EIC_ACTION_CONNECT:-}" ] && set -- "$@" --connect "$EIC_ACTION_CONNECT"
  set -- "$@" ssh-config
  [ -n "${EIC_ACTION_OS_USER:-}" ] && set -- "$@" --os-user "$EIC_ACTION_OS_USER"
  [ -n "${EIC_ACTION_PREFIX:-}" ] && set -- "$@" --prefix "$EIC_ACTION_PREFIX"
  # shellcheck disable=SC2086 # split on white space, as documented
  set -- "$@" ${EIC_ACTION_SSH_CONFIG_ARGS:-}

  targets=$(targets_list)
  # shellcheck disable=SC2086 # one word per host
  for t in $targets; do
    case $t in
      -*) die "not a host to pre-connect: $t" "targets are hosts like i-0abc… or eic-web-1" ;;
    esac
  done

  dir=$(dirname "$config")
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    chmod 700 "$dir"
  fi
  tmp=$(mktemp "$dir/.eic-connect-action.XXXXXX")
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -f '$tmp'" EXIT
  {
    printf '%s\n' "$BEGIN_MARK"
    printf '# Written by the eic-connect GitHub Action (scripts/action.sh setup);\n'
    printf '# scripts/action.sh cleanup (the action with cleanup: true) removes it.\n'
    printf '%s%s\n' "$TARGETS_TAG" "${targets:+ $targets}"
  } >"$tmp"
  if ! "$bin" "$@" >>"$tmp"; then
    die "\`eic-connect $*\` failed (above)" "check the region, profile, os-user and prefix inputs"
  fi
  {
    # Back to every host, for whatever the file had at its top level.
    printf 'Host *\n'
    printf '%s\n' "$END_MARK"
  } >>"$tmp"
  # First in the file, so that its settings win for i-* and prefixed
  # hosts (ssh takes the first value it finds); a setup run again replaces
  # its block instead of adding one.
  without_block "$config" >>"$tmp" ||
    die "$config has \"$BEGIN_MARK\" without \"$END_MARK\"" \
      "mend the file by hand: the action will not guess where its block ends"
  if [ -f "$config" ]; then
    write_config "$config" "$tmp"
    rm -f "$tmp"
  else
    chmod 600 "$tmp"
    mv "$tmp" "$config"
  fi
  trap - EXIT
  say "wrote the eic-connect block into $config"
  output ssh-config "$config"

  # ssh's errors are read from a pipe: with connection reuse, the master
  # ssh leaves in the background and its ProxyCommand let go of it once
  # connected, so the pipe ends with the first ssh.
  # shellcheck disable=SC2086 # one word per host
  for t in $targets; do
    say "pre-connecting $t"
    if ! err=$(ssh -F "$config" -o BatchMode=yes -o ConnectTimeout=30 "$t" true </dev/null 2>&1 >/dev/null); then
      err=$(printf '%s' "$err" | tr '\n' ' ')
      die "could not pre-connect $t: $err" \
        "check the instance name, its state and the os-user input; eic-connect doctor ${t#*@} tells more"
    fi
  done
}

# ------------------------------------------------------------------ cleanup

do_cleanup() {
  config=$(ssh_config_file)
  if [ ! -f "$config" ] || ! grep -qxF "$BEGIN_MARK" "$config"; then
    say "no eic-connect block in $config: nothing to clean up"
    return 0
  fi
  block=$(awk -v b="$BEGIN_MARK" -v e="$END_MARK" '
    $0 == b { inside = 1 } inside { print } $0 == e { inside = 0 }' "$config")
  # Connection reuse: ask every master the pre-connect started to end, and
  # eic-connect to stop whatever else it keeps (when it has that command).
  if printf '%s\n' "$block" | grep -qiE '^[[:space:]]*Control(Master|Path)'; then
    targets=$(printf '%s\n' "$block" | sed -n "s/^$TARGETS_TAG//p")
    # shellcheck disable=SC2086 # one word per host
    for t in $targets; do
      ssh -F "$config" -o BatchMode=yes -O exit "$t" </dev/null >/dev/null 2>&1 || true
    done
  fi
  bin=$(eic_bin 2>/dev/null) || bin=
  if [ -n "$bin" ] && "$bin" --help 2>/dev/null | grep -q '^ *reuse '; then
    "$bin" reuse stop >/dev/null 2>&1 || say "\`eic-connect reuse stop\` failed; going on"
  fi
  dir=$(dirname "$config")
  tmp=$(mktemp "$dir/.eic-connect-action.XXXXXX")
  # shellcheck disable=SC2064 # the path is fixed now
  trap "rm -f '$tmp'" EXIT
  without_block "$config" >"$tmp" || die "$config has \"$BEGIN_MARK\" without \"$END_MARK\"" \
    "mend the file by hand: the action will not guess where its block ends"
  write_config "$config" "$tmp"
  rm -f "$tmp"
  trap - EXIT
  say "removed the eic-connect block from $config"
}

# --------------------------------------------------------------------- main

[ $# -gt 0 ] || die "no subcommand" "usage: $0 install|setup|cleanup|url..."
for cmd in "$@"; do
  case $cmd in
    install | setup | cleanup | url) ;;
    *) die "unknown subcommand: $cmd" "usage: $0 install|setup|cleanup|url..." ;;
  esac
done
for cmd in "$@"; do
  case $cmd in
    install) do_install ;;
    setup) do_setup ;;
    cleanup) do_cleanup ;;
    url) do_url ;;
  esac
done
