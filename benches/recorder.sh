#!/usr/bin/env bash
# Measures convene record: CPU, peak memory and disk per recorded participant.
# usage: benches/recorder.sh BIN_DIR N SECONDS   (BIN_DIR: a release build of convene-server and convene-cli)
# Starts a server, `convene record`, and N `convene stream`s (640x360 at 30 fps, 800 kbit/s, an Opus tone),
# then reads the recorder's CPU time and peak memory from /proc and the recording's growth on disk.
set -euo pipefail
B=$1; N=$2; SECS=$3
P=$((20000 + RANDOM % 10000)); OUT=$(mktemp -d /var/tmp/rec-measure-XXXX)
$B/convene-server --listen 127.0.0.1:$P > $OUT/server.log 2>&1 & SRV=$!
sleep 1
$B/convene record --server http://127.0.0.1:$P --meeting-id m --out $OUT/rec > $OUT/rec.json 2> $OUT/rec.err & REC=$!
sleep 0.5
PIDS=()
for i in $(seq 1 $N); do
  $B/convene stream --server http://127.0.0.1:$P --meeting-id m --user-id p$i --source test-pattern \
    --resolution 640x360 --fps 30 --bitrate-kbps 800 --audio tone --duration $((SECS + 5)) > /dev/null 2>&1 & PIDS+=($!)
done
sleep 5
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' /proc/$1/stat; }
c0=$(cpu $REC); t0=$(date +%s.%N); b0=$(du -sb $OUT/rec | cut -f1)
sleep $SECS
c1=$(cpu $REC); t1=$(date +%s.%N); b1=$(du -sb $OUT/rec | cut -f1)
hwm=$(grep VmHWM /proc/$REC/status | awk '{print $2}')
rss=$(grep VmRSS /proc/$REC/status | awk '{print $2}')
kill -TERM $REC; wait $REC || true
for p in "${PIDS[@]}"; do kill $p 2>/dev/null || true; done
kill $SRV; wait 2>/dev/null || true
python3 - "$N" "$c0" "$c1" "$t0" "$t1" "$b0" "$b1" "$hwm" "$rss" "$tick" <<'PY'
import sys
n,c0,c1,t0,t1,b0,b1,hwm,rss,tick=sys.argv[1:]
n=int(n); secs=float(t1)-float(t0)
cpu=(int(c1)-int(c0))/int(tick)/secs*100
mbh=(int(b1)-int(b0))/secs*3600/1e6
print(f"participants {n}: recorder CPU {cpu:.2f} % of a core ({cpu/n:.2f} % each), peak RSS {int(hwm)/1024:.1f} MiB (now {int(rss)/1024:.1f}), disk {mbh:.0f} MB/hour ({mbh/n:.0f} MB/hour each)")
PY
rm -rf $OUT
