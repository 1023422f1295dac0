#!/usr/bin/env bash
# Baseline-ISA check: the build must run on every CPU it claims, so only the
# AVX2 and AVX-512 kernel objects may contain AVX code, and only the AVX-512
# object AVX-512 code. Everything else (the dispatcher that runs CPUID, the
# scalar kernels, the bindings, and any inline/template function the linker
# picks from some object) must stay within x86-64 baseline.
#
#   bash tests/cpp/run.sh                       # builds build/cpp (and build/aarch64)
#   bash tests/cpp/check_isa.sh [EXT.so ...]
#
# 1. Objects of the core in build/cpp: no AVX outside avx2.cc.o/avx512.cc.o, no
#    AVX-512 in avx2.cc.o, and no weak (COMDAT) definitions in either of those
#    two, which the linker could pick for a baseline caller.
# 2. Extensions (the arguments; default: every build/cp*/_C*.so that pip or
#    `python -m build` left): every AVX instruction in the final .so must lie in
#    code that the link map (_C.map beside the .so, written by CMakeLists.txt)
#    attributes to avx2.cc.o or avx512.cc.o, and every AVX-512 one to
#    avx512.cc.o. The map is used instead of symbol names because the shipped
#    .so is stripped and the kernels' names are local and repeated per ISA.
# 3. aarch64 objects in build/aarch64, if present: no SVE and no LSE atomics
#    (both beyond the armv8.0 baseline; NEON is baseline).
#
# "AVX" means VEX- or EVEX-encoded instructions (first opcode byte c4/c5/62 after
# legacy prefixes; in 64-bit mode those bytes mean nothing else), so AVX code
# touching only xmm registers (vmovss, vfmadd231ss, ...) is caught too, plus any
# ymm/zmm operand. "AVX-512" means EVEX-encoded, or zmm, k0-k7 or
# xmm16-31/ymm16-31 operands.
set -euo pipefail
cd "$(dirname "$0")/../.."

OBJDIR=build/cpp/CMakeFiles/sparseprop_core.dir/csrc
SHOW=5          # offending instructions printed per object
status=0
fail() { echo "FAIL: $*" >&2; status=1; }

# objdump -d on $1 -> one line per AVX instruction: address, class (avx|avx512),
# function label (objects only; "?" in a stripped .so), instruction.
avx_insns() {
  objdump -d -C --insn-width=15 "$1" | awk -F'\t' '
    /^[0-9a-f]+ <.*>:$/ { fn = $0; sub(/^[0-9a-f]+ </, "", fn); sub(/>:$/, "", fn); next }
    NF >= 3 && $1 ~ /^ *[0-9a-f]+:$/ {
      n = split($2, b, " "); i = 1
      while (i < n && b[i] ~ /^(66|67|f2|f3|f0|2e|36|3e|26|64|65)$/) i++
      insn = $3; for (j = 4; j <= NF; j++) insn = insn " " $j
      if (b[i] == "62" || insn ~ /%(zmm|k[0-7]|[xy]mm(1[6-9]|2[0-9]|3[01]))/) cls = "avx512"
      else if (b[i] == "c4" || b[i] == "c5" || insn ~ /%ymm/) cls = "avx"
      else next
      addr = $1; gsub(/[ :]/, "", addr)
      print addr "\t" cls "\t" (fn == "" ? "?" : fn) "\t" insn
    }'
}

# ---------------------------------------------------------------- 1. objects
check_objects() {
  local obj base allowed list n_avx n_512
  for obj in $(find "$OBJDIR" -name '*.o' | sort); do
    base=$(basename "$obj")
    case "$base" in
      avx512.cc.o) allowed=avx512 ;;
      avx2.cc.o)   allowed=avx ;;
      *)           allowed=none ;;
    esac
    list=$(avx_insns "$obj")
    n_avx=$(grep -c $'\tavx\t' <<< "$list" || true)
    n_512=$(grep -c $'\tavx512\t' <<< "$list" || true)
    echo "  $base: $n_avx AVX/AVX2, $n_512 AVX-512 instructions (allowed: $allowed)"
    if [ "$allowed" = none ] && [ -n "$list" ]; then
      fail "$obj is baseline code but contains AVX instructions:"
      printf '%s\n' "$list" | sed -n "1,${SHOW}p" | sed 's/^/    /' >&2
    elif [ "$allowed" = avx ] && [ "$n_512" -gt 0 ]; then
      fail "$obj (AVX2 kernels) contains AVX-512 instructions:"
      grep $'\tavx512\t' <<< "$list" | sed -n "1,${SHOW}p" | sed 's/^/    /' >&2
    fi
    # Positive controls: the kernels really are vectorized and this script sees it.
    [ "$base" != avx2.cc.o ] || [ "$n_avx" -gt 0 ] || fail "$obj has no AVX code: flags lost, or this check is broken"
    [ "$base" != avx512.cc.o ] || [ "$n_512" -gt 0 ] || fail "$obj has no AVX-512 code: flags lost, or this check is broken"
    # A weak definition (inline function, template instance) in an ISA object may be the
    # copy the linker keeps for every caller, baseline ones included.
    if [ "$allowed" != none ]; then
      local weak
      weak=$(nm -C --defined-only "$obj" | awk '$2 ~ /^[Wi]$/' || true)
      [ -z "$weak" ] || { fail "$obj defines weak symbols (keep ISA code in the anonymous namespace):"; echo "$weak" | sed -n "1,${SHOW}p" | sed 's/^/    /' >&2; }
    fi
  done
  for base in avx2.cc.o avx512.cc.o; do
    [ -n "$(find "$OBJDIR" -name "$base")" ] || fail "$OBJDIR has no $base"
  done
}

# ---------------------------------------------------------------- 2. extension
# Prints "start<TAB>end<TAB>object" (decimal, end exclusive) for every input
# section that the link map places in one of the .so's code sections.
map_ranges() {  # $1 = map, $2 = space-separated code section names
  awk -v code=" $2 " '
    function hex(s,   i, v) { s = tolower(s); sub(/^0x/, "", s); v = 0
      for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
      return v }
    function rec(addr, size, line,   f, start, len) {
      if (index(code, " " out " ") == 0) return
      start = hex(addr); len = hex(size); if (len == 0) return
      f = line; sub(/^ *[^ ]* *0x[0-9a-fA-F]+ +0x[0-9a-fA-F]+ +/, "", f)
      if (f ~ /\(.*\)$/) { sub(/^.*\(/, "", f); sub(/\)$/, "", f) }   # lib.a(member.o)
      sub(/^.*\//, "", f)
      print start "\t" start + len "\t" f
    }
    /^Linker script and memory map/ { inmap = 1; next }
    !inmap { next }
    /^[^ ]/ { out = $1; pending = 0; next }                      # output section
    /^ \.[^ ]/ {                                                # input section
      if (NF >= 4 && $2 ~ /^0x/ && $3 ~ /^0x/) { rec($2, $3, $0); pending = 0 }
      else pending = (NF == 1); next }
    pending && NF >= 3 && $1 ~ /^0x/ && $2 ~ /^0x/ { rec($1, $2, $0); pending = 0; next }
    { pending = 0 }
  ' "$1" | sort -n
}

check_extension() {
  local so=$1 map code text_so text_map report
  map=$(dirname "$so")/_C.map
  [ -f "$map" ] || { fail "$so: no link map $map (built before CMakeLists.txt wrote one?)"; return; }
  # The map must describe this very binary: same .text address and size.
  text_so=$(objdump -h -w "$so" | awk '$2 == ".text" { a = $4; s = $3; sub(/^0+/, "", a); sub(/^0+/, "", s); print a " " s; exit }')
  text_map=$(awk '/^\.text[ \t]+0x/ { a = $2; s = $3; sub(/^0x0*/, "", a); sub(/^0x0*/, "", s); print a " " s; exit }' "$map")
  if [ -z "$text_so" ] || [ "$text_so" != "$text_map" ]; then
    fail "$so: link map $map does not describe it (.text at/size $text_so; in the map: $text_map): stale map?"
    return
  fi
  code=$(objdump -h -w "$so" | awk '/CODE/ { printf "%s ", $2 }')
  report=$(awk -F'\t' -v show="$SHOW" '
    function hex(s,   i, v) { s = tolower(s); v = 0
      for (i = 1; i <= length(s); i++) v = v * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1
      return v }
    NR == FNR { lo[++n] = $1 + 0; hi[n] = $2 + 0; obj[n] = $3; next }
    {
      a = hex($1); l = 1; h = n; k = 0
      while (l <= h) { m = int((l + h) / 2); if (lo[m] <= a) { k = m; l = m + 1 } else h = m - 1 }
      o = (k && a < hi[k]) ? obj[k] : "(no object in the map)"
      count[o "\t" $2]++
      ok = (o == "avx512.cc.o") || (o == "avx2.cc.o" && $2 == "avx")
      if (!ok && shown[o]++ < show) print "BAD\t0x" $1 "\t" o "\t" $2 "\t" $4
    }
    END { for (c in count) print "COUNT\t" c "\t" count[c] }
  ' <(map_ranges "$map" "$code") <(avx_insns "$so"))
  echo "  $(basename "$so") (objects per the link map):"
  awk -F'\t' '$1 == "COUNT" { print "    " $2 ": " $4 " " ($3 == "avx" ? "AVX/AVX2" : "AVX-512") " instructions" }' <<< "$report" | sort
  if grep -q '^BAD' <<< "$report"; then
    fail "$so: AVX code outside the kernel objects that may run it (address, object, class, instruction):"
    grep '^BAD' <<< "$report" | cut -f2- | sed 's/^/    /' >&2
  fi
  grep -q $'^COUNT\tavx512.cc.o\tavx512\t' <<< "$report" ||
    fail "$so: no AVX-512 code attributed to avx512.cc.o: map parsing or this check is broken"
  grep -q $'^COUNT\tavx2.cc.o\tavx\t' <<< "$report" ||
    fail "$so: no AVX code attributed to avx2.cc.o: map parsing or this check is broken"
}

# ---------------------------------------------------------------- 3. aarch64
check_aarch64() {
  local dir=build/aarch64/CMakeFiles/sparseprop_core.dir/csrc obj hits neon=0
  [ -d "$dir" ] || { echo "aarch64: no build/aarch64 (tests/cpp/run.sh builds it when the cross tools exist): skipped"; return; }
  command -v aarch64-linux-gnu-objdump > /dev/null || { echo "aarch64: no aarch64-linux-gnu-objdump: skipped"; return; }
  echo "aarch64 objects (baseline armv8-a; NEON allowed everywhere; no SVE/SME, no LSE atomics):"
  for obj in $(find "$dir" -name '*.o' | sort); do
    hits=$(aarch64-linux-gnu-objdump -d -C "$obj" | awk -F'\t' 'NF >= 3 {
        insn = $3; for (j = 4; j <= NF; j++) insn = insn " " $j
        if (insn ~ /(^|[ ,{])[zp][0-9]+\.[bhsdq]/ || insn ~ /(^|[ ,{])p[0-9]+\/[zm]/ ||
            insn ~ /^(ldadd|ldclr|ldeor|ldset|ldsmax|ldsmin|ldumax|ldumin|stadd|stclr|steor|stset|stsmax|stsmin|stumax|stumin|swp|cas)[alhbp]* /)
          print "    " insn }')
    [ "$(basename "$obj")" != neon.cc.o ] || neon=$(aarch64-linux-gnu-objdump -d "$obj" | awk '/v[0-9]+\.4s/ { n++ } END { print n + 0 }')
    if [ -n "$hits" ]; then
      fail "$obj contains instructions beyond armv8-a:"; echo "$hits" | sed -n "1,${SHOW}p" >&2
    else
      echo "  $(basename "$obj"): ok"
    fi
  done
  [ "$neon" -gt 0 ] || fail "$dir/kernels/neon.cc.o has no NEON (v.4s) code: missing, or this check is broken"
}

# ---------------------------------------------------------------- main
[ -d "$OBJDIR" ] || { echo "no $OBJDIR: run bash tests/cpp/run.sh first" >&2; exit 1; }
if [[ "$(objdump -f "$OBJDIR/dispatch.cc.o")" == *x86-64* ]]; then
  echo "x86-64 objects ($OBJDIR):"
  check_objects
  if [ "$#" -gt 0 ]; then sos=("$@"); else mapfile -t sos < <(find build -maxdepth 2 -path 'build/cp*' -name '_C*.so' | sort); fi
  [ "${#sos[@]}" -gt 0 ] || echo "no extension .so given or found under build/cp*/: extension not checked"
  for so in "${sos[@]}"; do
    echo "extension $so:"
    check_extension "$so"
  done
else
  echo "native build is not x86-64: AVX checks skipped"
fi
check_aarch64

if [ "$status" -eq 0 ]; then echo "ISA check passed"; else echo "ISA check FAILED" >&2; fi
exit "$status"
