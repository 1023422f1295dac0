#!/usr/bin/env bash
# zig-cxx.sh ZIG c++|cc TARGET ARGS...: `zig c++ -target TARGET ARGS`, except
# that a -Wl,-Map=FILE / -Xlinker -Map=FILE link option (CMakeLists.txt's link map, which
# tests/cpp/check_isa.sh needs) is honoured: zig's driver rejects -Map, but the
# ld.lld it runs supports it. So link once with -v to learn the exact ld.lld
# command, then run that command again with -Map added: same inputs, same
# output file, plus the map (in lld's format; tests/wheel/lld_map.py converts).
set -euo pipefail
zig=$1 mode=$2 target=$3
shift 3
map= args=() prev=
for a in "$@"; do
  case $prev:$a in
    *:-Wl,-Map=*) map=${a#-Wl,-Map=} ;;
    -Xlinker:-Map=*) map=${a#-Map=}; unset 'args[${#args[@]}-1]' ;;
    *) args+=("$a") ;;
  esac
  prev=$a
done
# zig's clang maps -O3 to its own ReleaseFast (clang -O2); -Xclang -O3 after it
# restores the native build's -O3 for the compile step.
extra=()
for a in "${args[@]}"; do [ "$a" != -O3 ] || extra=(-Xclang -O3); done
[ -n "$map" ] || exec "$zig" "$mode" -target "$target" "${args[@]}" "${extra[@]}"

log=$("$zig" "$mode" -target "$target" "${args[@]}" -v 2>&1) || { printf '%s\n' "$log" >&2; exit 1; }
line=$(printf '%s\n' "$log" | grep '^ld.lld ' | tail -n 1)
[ -n "$line" ] || { echo "zig-cxx.sh: no ld.lld command in zig's -v output" >&2; exit 1; }
read -r -a lld <<< "${line#ld.lld }"
"$zig" ld.lld "${lld[@]}" -Map="$map"
