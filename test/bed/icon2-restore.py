#!/usr/bin/env python3
"""Stand-in for icon2-node's FASTEST_START restore of an indexed tree (DOWNLOAD_URL_TYPE=indexing).

Usage: icon2-restore.py DOWNLOAD_URL SERVICE NODE_DIR

It does what the node image does before goloop starts, step for step, so that a test can prove
that a tree we publish restores with no tool of ours:
  1. GET {DOWNLOAD_URL}/{SERVICE}.json -> index_url, checksum_url; save both under
     NODE_DIR/restore/ by the last segment of their URL's path.
  2. aria2c with the node image's options, the index as input file, into NODE_DIR.
  3. Every entry of the checksum JSON: the file exists, has file_size bytes, and the xxh3_64 hex
     of its last 10,240 bytes (all of it when smaller) equals checksum.
  4. The files that failed: find their URL again in the index the way the node image does (a
     URL with "{name}?version=" and four digits, name unescaped in the pattern), delete them,
     fetch them once more with aria2c, check again.
  5. All good: write NODE_DIR/restore/RESTORED and restore/checksum_result.json, exit 0.
     Otherwise exit 1 and name each bad file on stderr.
A NODE_DIR/restore/RESTORED already there means restored: exit 0 without doing anything, as the
node image does. Needs Python 3 with the xxhash module and aria2c on PATH.
"""
import datetime
import json
import os
import re
import subprocess
import sys
import urllib.request

TAIL_BYTES = 10240
ARIA2C_OPTIONS = [
    "-V", "-j10", "-x8", "--http-accept-gzip", "--disk-cache=64M", "-c",
    "--allow-overwrite", "--log-level=error",
]


def say(msg):
    print(f"[icon2-restore] {msg}", flush=True)


def http_get_text(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read().decode("utf-8")


def saved_name(url):
    """The node image saves a downloaded URL under its path's last segment, query left out."""
    return url.split("/")[-1].split("?")[0]


def tail_xxh3(path):
    import xxhash

    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(size - TAIL_BYTES if size >= TAIL_BYTES else 0)
        return xxhash.xxh3_64_hexdigest(f.read())


def run_aria2c(input_file, node_dir, log_file):
    """aria2c as the node image runs it. Like the image, a non-zero exit stops the restore only
    when aria2c also wrote to stderr; otherwise the check that follows decides."""
    cmd = ["aria2c", "-i", input_file, "-d", node_dir, *ARIA2C_OPTIONS, "--log", log_file]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        say(f"aria2c exited {p.returncode}")
        if p.stderr.strip():
            say(f"aria2c stderr: {p.stderr.strip()}")
            sys.exit(3)


def check(node_dir, sums):
    """The node image's check of every file that the checksum JSON lists: {path: [reasons]}."""
    failed = {}
    for rel, want in sums.items():
        full = os.path.join(node_dir, rel)
        if not os.path.isfile(full):
            failed[rel] = ["missing"]
            continue
        reasons = []
        size = os.path.getsize(full)
        if size != want.get("file_size"):
            reasons.append(f"size {size} != {want.get('file_size')}")
        got = tail_xxh3(full)
        if got != want.get("checksum"):
            reasons.append(f"checksum {got} != {want.get('checksum')}")
        if reasons:
            failed[rel] = reasons
    return failed


def find_in_index(index_lines, rel):
    """The URL and out= line of a failed file, found in the index as the node image finds them:
    by regular expressions built from the file's name without escaping it. A URL without
    "{name}?version=NNNN" is not found (the node image then writes "None" and gets nothing)."""
    name = rel.split("/")[-1] if rel.split("/")[0] == "data" else rel
    url_pattern = re.compile(f"(https|http).*{name}\\?version=([0-9][0-9][0-9][0-9])")
    out_pattern = re.compile(f"(\t)out=.*{name}")
    url = out = None
    for line in index_lines:
        if url_pattern.match(line):
            url = line.strip()
        if out_pattern.match(line):
            out = line.strip()
        if url and out:
            break
    return url, out


def main(argv):
    if len(argv) != 4:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    download_url, service, node_dir = argv[1], argv[2], os.path.abspath(argv[3])
    restore_dir = os.path.join(node_dir, "restore")
    os.makedirs(restore_dir, exist_ok=True)
    restored_mark = os.path.join(restore_dir, "RESTORED")
    result_file = os.path.join(restore_dir, "checksum_result.json")
    log_file = os.path.join(restore_dir, "download_error.log")
    if os.path.isfile(restored_mark):
        say(f"{restored_mark} is there: already restored, nothing to do")
        return 0

    pointer_url = f"{download_url}/{service}.json"
    try:
        pointer = json.loads(http_get_text(pointer_url))
    except Exception as e:  # noqa: BLE001 - any failure here ends the restore
        print(f"cannot read {pointer_url}: {e}", file=sys.stderr)
        return 2
    saved = {}
    for key in ("index_url", "checksum_url"):
        url = pointer.get(key)
        if not url:
            print(f"{pointer_url} has no {key}", file=sys.stderr)
            return 2
        saved[key] = os.path.join(restore_dir, saved_name(url))
        with open(saved[key], "w") as f:
            f.write(http_get_text(url))
    with open(saved["checksum_url"]) as f:
        sums = json.load(f)
    say(f"{len(sums)} files listed; fetching with aria2c into {node_dir}")

    run_aria2c(saved["index_url"], node_dir, log_file)
    failed = check(node_dir, sums)

    if failed:
        say(f"{len(failed)} file(s) failed the check; fetching them once more")
        with open(saved["index_url"]) as f:
            index_lines = f.readlines()
        retry_list = os.path.join(restore_dir, "re_download_file_list.txt")
        with open(retry_list, "w") as f:
            for rel in failed:
                url, out = find_in_index(index_lines, rel)
                if url is None:
                    say(f"{rel}: the index has no URL with '{rel}?version=' that the retry can find")
                f.write(f"{url}\n\t{out}\n")
                full = os.path.join(node_dir, rel)
                if os.path.isfile(full):
                    os.remove(full)
        run_aria2c(retry_list, node_dir, log_file)
        failed = check(node_dir, sums)

    if failed:
        with open(result_file, "w") as f:
            json.dump({**{rel: {"reasons": r} for rel, r in failed.items()}, "state": False}, f)
        for rel, reasons in failed.items():
            print(f"BAD {rel}: {', '.join(reasons)}", file=sys.stderr)
        print(f"restore failed: {len(failed)} bad file(s)", file=sys.stderr)
        return 1
    with open(result_file, "w") as f:
        json.dump({"state": "OK"}, f)
    with open(restored_mark, "w") as f:
        f.write(datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])
    say(f"restored {len(sums)} files; wrote {restored_mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
