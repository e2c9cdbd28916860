# AuthorizedKeysCommand of the eic-connect test bed (the stand-in for the
# EC2 Instance Connect helper on a real instance).
#
# sshd runs it as:   /bin/sh <beddir>/akc.sh <user> <server-address>
# (sshd_config has one `Match LocalAddress` block per address, each passing
# its own address, because OpenSSH 9.2 has no %C token for this command.)
#
# It maps the address the client connected to onto an instance id
# (<beddir>/addr/<address> holds the id while that instance is running), then
# prints the keys in <beddir>/keys/<instance-id>/<user> whose expiry (first
# field, epoch seconds) is still in the future on the bed clock:
# `date +%s` plus the integer in <beddir>/clock_offset (missing means 0).
# Anything unexpected prints nothing, so the login is refused.

dir=$(dirname "$0")
user=$1
addr=$2

case $user in
  '' | .* | */*) exit 0 ;;
esac
case $addr in
  '' | .* | */*) exit 0 ;;
esac

id=$(cat "$dir/addr/$addr" 2>/dev/null) || exit 0
case $id in
  i-*) ;;
  *) exit 0 ;;
esac

# A test may hold authentication here: <beddir>/akc_hold holds the seconds
# to wait; <beddir>/akc_held tells the test that a login is being held.
hold=$(cat "$dir/akc_hold" 2>/dev/null)
case $hold in
  '' | *[!0-9]*) ;;
  *) : > "$dir/akc_held"; sleep "$hold" ;;
esac

offset=$(cat "$dir/clock_offset" 2>/dev/null)
case $offset in
  '' ) offset=0 ;;
  -[0-9]* | [0-9]*) ;;
  *) offset=0 ;;
esac
now=$(( $(date +%s) + offset ))

keys="$dir/keys/$id/$user"
[ -f "$keys" ] || exit 0
while read -r expiry key; do
  case $expiry in
    '' | *[!0-9]*) continue ;;
  esac
  if [ "$expiry" -gt "$now" ]; then
    printf '%s\n' "$key"
  fi
done < "$keys"
exit 0
