#!/usr/bin/env bash
# The check of issue 12: a log of write, devread, devwrite, read and fsync over SIZE (default 512M)
# replays with --check against the reference model under 16 MiB of host pages and 16 MiB of device
# frames, and the replay's peak resident memory (VmHWM, from replay --stats) stays under LIMIT MiB
# (default 640). Usage: scripts/scale-replay.sh [SIZE [LIMIT_MIB]]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-512M}
limit=${2:-640}
bytes=$(node -e "const m=/^(\d+)([KMG]?)$/i.exec(process.argv[1]); if(!m) process.exit(2); console.log(Number(m[1]) * ({'':1,k:2**10,m:2**20,g:2**30})[m[2].toLowerCase()])" "$size")
log=$(mktemp --suffix=.jsonl)
err=$(mktemp)
trap 'rm -f "$log" "$err"' EXIT
printf '%s\n' \
  "{\"op\":\"write\",\"off\":0,\"len\":$bytes,\"tag\":1}" \
  "{\"op\":\"devread\",\"off\":0,\"len\":$bytes}" \
  "{\"op\":\"devwrite\",\"off\":0,\"len\":$bytes,\"tag\":2}" \
  "{\"op\":\"read\",\"off\":0,\"len\":$bytes}" \
  '{"op":"fsync"}' >"$log"
node bin/hmmlab.mjs replay "$log" --check --stats --host-pages 4096 --device-pages 4096 2>"$err"
peak=$(sed -n 's/^peak resident memory \([0-9]*\) MiB.*/\1/p' "$err")
echo "peak resident memory ${peak} MiB (limit ${limit} MiB)"
if [ -z "$peak" ] || [ "$peak" -ge "$limit" ]; then
  grep -v 'artificially reduced' "$err" >&2 || true
  exit 1
fi
