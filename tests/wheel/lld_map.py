"""Rewrite an ld.lld link map (-Map) in GNU ld's layout.

tests/cpp/check_isa.sh reads GNU ld maps (the native build links with GNU ld);
the zig release build links with ld.lld, whose map has one row per output
section, input section and symbol:

         VMA      LMA     Size Align Out     In      Symbol
       136d0    136d0    1d9a2    16 .text
       136d0    136d0       10    16         /x/libsparseprop_core.a(avx2.cc.o):(.text.foo)
       136d0    136d0       10     1                 foo

This prints the same output and input sections the way GNU ld does
(".text  0xADDR 0xSIZE" / " .text.foo 0xADDR 0xSIZE /x/lib.a(avx2.cc.o)"),
symbol rows dropped, so check_isa.sh attributes code to objects unchanged.

    python lld_map.py LLD_MAP > GNU_MAP
"""
import re
import sys

ROW = re.compile(r"^\s*([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+(\d+) +(\S.*)$")
INPUT = re.compile(r"^(.*):\((\S+)\)$")


def main(path):
    lines = open(path).read().splitlines()
    if not lines or "VMA" not in lines[0] or "Symbol" not in lines[0]:
        sys.exit(f"{path}: not an ld.lld map")
    # Output sections start in the header's "Out" column, input sections 8
    # columns further, symbols 16.
    out_col = lines[0].index("Out")
    print("Linker script and memory map\n")
    for line in lines[1:]:
        m = ROW.match(line)
        if not m:
            continue
        vma, _lma, size, _align, rest = m.groups()
        indent = m.start(5)
        if indent == out_col:
            print(f"{rest.split()[0]:<16}0x{int(vma, 16):016x} 0x{int(size, 16):x}")
        elif indent == out_col + 8:
            im = INPUT.match(rest.strip())
            if im:
                print(f" {im.group(2):<15} 0x{int(vma, 16):016x} 0x{int(size, 16):x} {im.group(1)}")


if __name__ == "__main__":
    main(sys.argv[1])
