/**
 * The host reads an archive from S3 itself (`download-on`), with curl over a GET URL that the
 * runner signs: the credentials stay on the runner and the bytes cross the network once, into
 * the extraction of extract.ts.
 *
 * The object is read in ranges, `conns` of them in flight, each into a file of its own beside
 * the staging folder and handed on in order, so the host holds at most `conns` ranges on its
 * disk. Every range is pinned to the ETag that the runner saw (If-Match): a replaced archive
 * ends the read with HTTP 412. A range that breaks off is read again from its last byte, as
 * the runner's own reads are (s3/download.ts); one that makes no progress six times ends the
 * read. The archive's sha256 is taken on the host as it passes, for the runner to check
 * against the manifest.
 */

/** Starts each line of stderr that says why the host's read of the archive stopped or retried. */
export const FETCH_MARK = 'prep-snapshot-fetch';

/** Exit statuses of the extraction when the host's read of the archive failed. */
export const FETCH_CHANGED = 66;
export const FETCH_REFUSED = 67;
export const FETCH_BROKE = 68;

/**
 * Printed (then the command ends, with nothing made) when the host cannot read the archive's
 * first byte: S3 is not reachable from it, or refuses the URL.
 */
export const UNREACHABLE_LINE = 'prep-snapshot-unreachable';

/** Printed as each range is handed on: the bytes handed on so far. */
export const GOT_LINE = 'prep-snapshot-got';

/** Printed once the archive has been read whole, before the count of files: its sha256. */
export const FETCHED_LINE = 'prep-snapshot-fetched';

/** Attempts at a range that make no progress before the read is given up. */
const ATTEMPTS = 6;

/** What the runner tells the host, after the go line, for a read of its own. */
export interface FetchOrder {
  url: string;
  size: number;
  etag: string;
  rangeBytes: number;
  connections: number;
}

/** The lines after `go NAME fetch`: the object's size, ETag, range size and connections, then the URL. */
export function fetchOrderLines(o: FetchOrder): string {
  return `${o.size} ${o.etag.replace(/\s/g, '')} ${o.rangeBytes} ${o.connections}\n${o.url}\n`;
}

const MiB = 1024 * 1024;

/**
 * The range size for the host's read: each range is a curl of its own (a process and a
 * connection), so ranges are larger than the runner's, up to 64 MiB (8 connections hold at
 * most 512 MiB of the host's disk); a small archive still spreads over the connections.
 */
export function hostRangeBytes(size: number, connections: number): number {
  const share = Math.ceil(size / Math.max(1, connections) / 4 / MiB) * MiB;
  return Math.min(64 * MiB, Math.max(MiB, share));
}

/** The most of the host's disk that the ranges in flight take. */
export function hostFetchBytes(size: number, connections: number): number {
  return Math.min(size, hostRangeBytes(size, connections) * connections);
}

/**
 * Lines of the extraction's script, run after its go line said `fetch` (in `$how`) and before
 * the staging folder is made: read the order, put the URL where only this user reads it (a
 * config file of curl's, not its command line, which every user of the host can see), and
 * read the first byte. What cannot be read prints UNREACHABLE_LINE and ends the command.
 */
export const FETCH_SETUP = [
  `dl=`,
  `if [ "$how" = fetch ]; then`,
  `  IFS=' ' read -r size etag range conns || exit 0`,
  `  IFS= read -r url || exit 0`,
  `  dl="$stage.dl"`,
  `  rm -rf -- "$dl"`,
  `  (umask 077; mkdir -p -- "$dl"; printf 'url = "%s"\\n' "$url" > "$dl/url")`,
  // Locked as the staging folder is: a restore that runs beside this one leaves it alone.
  `  exec 8<"$dl"`,
  `  if command -v flock >/dev/null 2>&1; then flock 8; fi`,
  `  code=$(curl -sS -K "$dl/url" -H "If-Match: $etag" -r 0-0 -o "$dl/probe" --connect-timeout 15 --max-time 60 -w '%{http_code}' 2>"$dl/probe.err") || true`,
  `  if [ "$code" != 206 ]; then`,
  `    echo "${UNREACHABLE_LINE} $(s3why "$code" "$dl/probe" "$dl/probe.err")"`,
  `    rm -rf -- "$dl"`,
  `    exit 0`,
  `  fi`,
  // The read's progress goes to the runner on the command's stdout, whatever tar's checks do with theirs.
  `  exec 4>&1`,
  // The runner keeps the input open while it watches. Its end (the runner or its connection
  // gone) stops the read: the reader and every process under it, listed parents first so that
  // none starts another curl; the decompressor and tar then end on a cut input, and the EXIT
  // trap removes what the command made.
  `  exec 7<&0`,
  `  ( cat <&7 >/dev/null 2>&1; : > "$dl/gone"; if [ -s "$dl/reader" ]; then kill -TERM $(below "$(cat "$dl/reader")") 2>/dev/null; fi ) </dev/null >/dev/null 2>&1 &`,
  `  exec 7<&-`,
  `fi`,
];

/**
 * Shell functions: `s3why CODE BODY ERR` says in one line why a request failed (S3's error code
 * and message, or curl's); `fetched` writes the archive to stdout, its sha256 to "$dl/sum",
 * and its failure's status to "$dl/status".
 */
export const FETCH_FUNCTIONS = [
  // A process and all under it, parents first (procps' ps; without it, the process alone).
  `below() {`,
  `  local c`,
  `  echo "$1"`,
  `  for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do below "$c"; done`,
  `}`,
  `s3why() {`,
  `  local why`,
  `  why=$(tr -d '\\r\\n' < "$2" 2>/dev/null | sed -n 's|.*<Code>\\([^<]*\\)</Code>.*<Message>\\([^<]*\\)</Message>.*|\\1: \\2|p' | head -c 300)`,
  `  [ -n "$why" ] || why=$(tr '\\n' ' ' < "$3" 2>/dev/null | head -c 300)`,
  `  echo "HTTP $1\${why:+, $why}"`,
  `}`,
  // One range into "$dl/$1"; a cut read goes on from its last byte.
  `range_into() {`,
  `  local i=$1 from to want have=0 code a=0 t="$dl/$1.try" p="$dl/$1.part"`,
  `  from=$(( i * range )); to=$(( from + range - 1 )); [ "$to" -lt "$size" ] || to=$(( size - 1 ))`,
  `  want=$(( to - from + 1 ))`,
  `  while :; do`,
  `    code=$(curl -sS -K "$dl/url" -H "If-Match: $etag" -r "$(( from + have ))-$to" --connect-timeout 20 -y 60 -Y 1024 -o "$t" -w '%{http_code}' 2>"$t.err") || true`,
  `    case "$code" in`,
  `      206) if [ "$have" = 0 ]; then mv -f -- "$t" "$p"; else cat -- "$t" >> "$p"; fi ;;`,
  `      412) echo "${FETCH_MARK} HTTP 412: its ETag is no longer $etag." >&2; return ${FETCH_CHANGED} ;;`,
  `      4??) echo "${FETCH_MARK} S3 refused bytes $from-$to: $(s3why "$code" "$t" "$t.err")" >&2; return ${FETCH_REFUSED} ;;`,
  `    esac`,
  `    local now; now=$(stat -c %s -- "$p" 2>/dev/null || echo 0)`,
  `    if [ "$now" = "$want" ]; then mv -f -- "$p" "$dl/$i"; rm -f -- "$t" "$t.err"; return 0; fi`,
  `    if [ "$now" -gt "$have" ]; then a=0; else a=$(( a + 1 )); fi`,
  `    have=$now`,
  `    if [ "$a" -ge ${ATTEMPTS} ]; then`,
  `      echo "${FETCH_MARK} bytes $from-$to: ${ATTEMPTS} attempts in a row failed at byte $(( from + have )), the last with $(s3why "$code" "$t" "$t.err")" >&2`,
  `      return ${FETCH_BROKE}`,
  `    fi`,
  `    echo "${FETCH_MARK} retry bytes $from-$to: $(s3why "$code" "$t" "$t.err"); again from byte $(( from + have ))" >&2`,
  `    [ "$a" = 0 ] || sleep "$a"`,
  `  done`,
  `}`,
  `fetched() {`,
  `  local n=$(( (size + range - 1) / range )) i=0 next=0 got=0 st hashing`,
  `  local -a pid=()`,
  `  echo "$BASHPID" > "$dl/reader"`,
  `  mkfifo -- "$dl/hash"`,
  // OpenSSL's sha256 runs on the CPU's SHA extensions where coreutils' does not: 1.8 s against
  // 7.6 s for 2 GiB on the benchmark's machine, where it was what held the restore back.
  `  if command -v openssl >/dev/null 2>&1; then set -- openssl dgst -sha256 -r; else set -- sha256sum; fi`,
  `  wide "$@" < "$dl/hash" > "$dl/sum" 4>&- &`,
  `  hashing=$!`,
  `  exec 5>"$dl/hash"`,
  `  while [ "$i" -lt "$n" ]; do`,
  `    if [ -e "$dl/gone" ]; then return 1; fi`,
  `    while [ "$next" -lt "$n" ] && [ "$next" -lt $(( i + conns )) ]; do`,
  `      range_into "$next" 4>&- 5>&- &`,
  `      pid[next]=$!`,
  `      next=$(( next + 1 ))`,
  `    done`,
  `    st=0; wait "\${pid[i]}" || st=$?`,
  `    if [ "$st" != 0 ]; then echo "$st" > "$dl/status"; kill "\${pid[@]}" 2>/dev/null || true; return "$st"; fi`,
  // The range to the digest and to the decompressor at once, each at its own pace.
  `    cat -- "$dl/$i" >&5 4>&- &`,
  `    st=$!`,
  `    cat -- "$dl/$i"`,
  `    wait "$st"`,
  `    got=$(( got + $(stat -c %s -- "$dl/$i") ))`,
  `    rm -f -- "$dl/$i"`,
  `    echo "${GOT_LINE} $got" >&4`,
  `    i=$(( i + 1 ))`,
  `  done`,
  `  exec 5>&-`,
  `  wait "$hashing"`,
  `}`,
];

/**
 * After the extraction: the read's own failure says more than the decompressor's at the cut,
 * so its status comes first; else the sha256 is printed.
 */
export const FETCH_END = [
  `if [ -n "$dl" ] && [ -s "$dl/status" ]; then exit "$(cat "$dl/status")"; fi`,
];

/** The sha256 line, printed once the checks have passed. */
export const FETCH_REPORT = `if [ -n "$dl" ]; then echo "${FETCHED_LINE} $(cut -d' ' -f1 "$dl/sum")"; fi`;
