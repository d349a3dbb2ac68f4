#!/usr/bin/env bash
# usage: benches/join-latency.sh BIN_DIR ROUND   (BIN_DIR: a release build of convene-server and convene-cli)
# Join latency (connect + Hello + Join to Joined, convene load's connect_ms) with and without managed meetings:
# plain (ad hoc, nothing stored), store (meetings created in the embedded SQLite store, attendance written there),
# postgres (meetings created in a local PostgreSQL started here, as a cluster would keep them).
set -euo pipefail
B=$1; ROUND=$2
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
for mode in plain store postgres; do
  P=$((20000 + RANDOM % 10000)); A=$((P + 1)); Q=$((P + 2)); D=$(mktemp -d /var/tmp/jl-XXXX)
  extra=""; [ $mode = store ] && extra="--data-dir $D"
  if [ $mode = postgres ]; then
    chmod 777 $D; as_pg $PGBIN/initdb -D $D/pg -U convene -A trust --no-sync > /dev/null
    as_pg $PGBIN/pg_ctl -D $D/pg -o "-p $Q -k $D -c listen_addresses=127.0.0.1" -l $D/pg.log -w start > /dev/null
    extra="--data-dir $D/node --database-url postgres://convene@127.0.0.1:$Q/postgres"
  fi
  $B/convene-server --listen 127.0.0.1:$P --admin-token jl-admin-token-0123456789 --admin-listen 127.0.0.1:$A $extra > $D/server.log 2>&1 & S=$!
  sleep 1
  if [ $mode != plain ]; then
    for i in $(seq 0 19); do $B/convene admin --url http://127.0.0.1:$A --token jl-admin-token-0123456789 meeting create load-$i --max-participants 50 > /dev/null; done
  fi
  $B/convene load --server http://127.0.0.1:$P --transport ws -n 400 --rooms 20 --ramp-up 4 --duration 1 --video-fps 0 --audio-fps 0 --json 2>/dev/null \
    | python3 -c "import json,sys; r=json.load(sys.stdin); c=r['connect_ms']; print('$ROUND $mode', 'joined', r.get('joined', '?'), 'connect+join ms p50 %.2f p95 %.2f p99 %.2f max %.2f' % (c['p50'], c['p95'], c['p99'], c['max']))"
  kill $S; wait $S 2>/dev/null || true
  [ $mode = postgres ] && as_pg $PGBIN/pg_ctl -D $D/pg -m immediate stop > /dev/null
  rm -rf $D
done
