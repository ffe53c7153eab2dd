#!/bin/bash
# BENCHMARKS.md's publish row: one publish of the encoder's disk into a fresh moto, then the same again.
# Usage: IMGBUILD=path/to/imgbuild cloud/bench-publish.sh MASTER_FILE (its store must hold an encoder image).
set -eu
master=$1
port=$((20000 + RANDOM % 10000))
"${LECTERN_MOTO_SERVER:-moto_server}" -H 127.0.0.1 -p $port >/dev/null 2>&1 &
moto=$!
trap 'kill $moto' EXIT
until curl -s -o /dev/null "http://127.0.0.1:$port/"; do sleep 0.2; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench
publish() { "$IMGBUILD" --config "$master" publish ec2 --role encoder --endpoint-url "http://127.0.0.1:$port" >/dev/null; }
t0=$(date +%s.%N); publish; t1=$(date +%s.%N); publish; t2=$(date +%s.%N)
echo "first $(echo "$t1 - $t0" | bc) s, again $(echo "$t2 - $t1" | bc) s"
