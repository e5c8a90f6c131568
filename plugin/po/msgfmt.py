#!/usr/bin/env python3
"""msgfmt.py: PO to MO for the plug-in's catalogues where GNU msgfmt is missing
(the GIMP 3.0 test chroot has no gettext package): msgfmt.py IN.po OUT.mo.

Takes what the plug-in's catalogues use, msgid/msgstr pairs with continued
strings and C escapes, no plurals or contexts; a fuzzy entry or an empty
translation is left out, as msgfmt does. Writes the GNU .mo format: the
header, then the original and translated string tables, sorted by original."""
import ast
import struct
import sys


def entries(path):
    """(msgid, msgstr) pairs of the file, fuzzy ones left out."""
    out, key, cur, fuzzy = [], None, {}, False

    def flush():
        nonlocal cur, fuzzy
        if "msgid" in cur and cur.get("msgstr") and not fuzzy:
            out.append((cur["msgid"], cur["msgstr"]))
        cur, fuzzy = {}, False

    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if line.startswith("#,") and "fuzzy" in line:
            fuzzy = True
        if not line or line.startswith("#"):
            if not line and cur:
                flush()
            continue
        if line.startswith(("msgid ", "msgstr ")):
            key, _, rest = line.partition(" ")
            if key == "msgid" and cur.get("msgstr") is not None:
                flush()
            cur[key] = ast.literal_eval(rest)
        elif line.startswith('"') and key:
            cur[key] += ast.literal_eval(line)
        else:
            sys.exit("%s: cannot read: %s" % (path, line))
    flush()
    return out


def write_mo(pairs, path):
    pairs = sorted((k.encode(), v.encode()) for k, v in pairs)
    n = len(pairs)
    ids_at, strs_at = 28, 28 + n * 8
    data_at = 28 + n * 16
    ids, strs, table_ids, table_strs = b"", b"", [], []
    for k, _ in pairs:
        table_ids.append((len(k), data_at + len(ids)))
        ids += k + b"\0"
    for _, v in pairs:
        table_strs.append((len(v), data_at + len(ids) + len(strs)))
        strs += v + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, ids_at, strs_at, 0, 0)
    body = b"".join(struct.pack("<2I", *t) for t in table_ids + table_strs)
    with open(path, "wb") as f:
        f.write(head + body + ids + strs)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    write_mo(entries(sys.argv[1]), sys.argv[2])
