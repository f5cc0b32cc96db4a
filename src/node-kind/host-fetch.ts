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
/** A tree's file whose bytes are not its sha256's (it was removed). */
export const FETCH_DAMAGED = 69;

/**
 * Printed (then the command ends, with nothing made) when the host cannot read the archive's
 * first byte: S3 is not reachable from it, or refuses the URL.
 */
export const UNREACHABLE_LINE = 'prep-snapshot-unreachable';

/** Printed as each range is handed on: the bytes handed on so far. */
export const GOT_LINE = 'prep-snapshot-got';

/** Printed, for a tree, once the host has read a first object: it reads them all. */
export const REACHABLE_LINE = 'prep-snapshot-reachable';

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
 * The runner keeps the input open while it watches. Its end (the runner or its connection
 * gone) stops the read: the reader and every process under it, listed parents first so that
 * none starts another curl; the decompressor and tar then end on a cut input, and the EXIT
 * trap removes what the command made.
 */
const WATCH_INPUT = [
  `  exec 7<&0`,
  `  ( cat <&7 >/dev/null 2>&1; : > "$dl/gone"; if [ -s "$dl/reader" ]; then kill -TERM $(below "$(cat "$dl/reader")") 2>/dev/null; fi ) </dev/null >/dev/null 2>&1 &`,
  `  exec 7<&-`,
];

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
  ...WATCH_INPUT,
  `fi`,
];

/**
 * Lines of a tree's extraction, run once it holds its staging folder, when its go line said
 * `fetch-tree`: the list of files (its length on the next line, with the connections), then a
 * read of the first; what cannot be read prints UNREACHABLE_LINE, and the command goes on as
 * it does without `fetch-tree`, reading the files as a tar on its input.
 */
export const TREE_FETCH_SETUP = [
  `if [ "$how" = fetch-tree ]; then`,
  `  IFS=' ' read -r listbytes conns || exit 0`,
  `  dl="$stage.dl"`,
  `  rm -rf -- "$dl"`,
  `  (umask 077; mkdir -p -- "$dl"; head -c "$listbytes" > "$dl/list"; sed -n 2p "$dl/list" | sed 's/^/url = "/; s/$/"/' > "$dl/probe.url")`,
  `  exec 8<"$dl"`,
  `  if command -v flock >/dev/null 2>&1; then flock 8; fi`,
  // Nothing is written through a link that an earlier run's folder would hold.
  `  if [ -n "$(find "$stage" -type l -print -quit)" ]; then echo "${FETCH_MARK} the staging folder holds a symbolic link" >&2; exit ${FETCH_DAMAGED}; fi`,
  `  code=$(curl -sS -K "$dl/probe.url" -r 0-0 -o "$dl/probe" --connect-timeout 15 --max-time 60 -w '%{http_code}' 2>"$dl/probe.err") || true`,
  `  case "$code" in`,
  // 416: the first object is empty, and S3 answered.
  `    206|416) echo "${REACHABLE_LINE}" ;;`,
  `    *) echo "${UNREACHABLE_LINE} $(s3why "$code" "$dl/probe" "$dl/probe.err")"; rm -rf -- "$dl"; dl=; how= ;;`,
  `  esac`,
  `fi`,
  `if [ "$how" = fetch-tree ]; then`,
  `  exec 4>&1`,
  ...WATCH_INPUT,
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
  // `get_bytes CONFIG FROM TO OUT WHAT [ETAG]`: bytes FROM-TO of the object that CONFIG's URL
  // names, appended to OUT (which may hold the first of them already); a cut read goes on
  // from its last byte. A first read goes straight into OUT, so that what a stopped read
  // brought stays there for the next run; a read after that goes through a file of its own,
  // which keeps an error's body out of OUT. WHAT names the bytes in the messages.
  `get_bytes() {`,
  `  local cfg=$1 from=$2 to=$3 out=$4 what=$5 want have code a=0 now dest t="$4.try"`,
  `  local -a pin=()`,
  `  [ -z "\${6:-}" ] || pin=(-H "If-Match: $6")`,
  `  want=$(( to - from + 1 ))`,
  `  have=$(stat -c %s -- "$out" 2>/dev/null || echo 0)`,
  `  while [ "$have" -lt "$want" ]; do`,
  `    if [ "$have" = 0 ]; then dest=$out; else dest=$t; fi`,
  `    code=$(curl -sS -K "$cfg" "\${pin[@]}" -r "$(( from + have ))-$to" --connect-timeout 20 -y 60 -Y 1024 -o "$dest" -w '%{http_code}' 2>"$t.err") || true`,
  `    case "$code" in`,
  `      206) [ "$dest" = "$out" ] || cat -- "$t" >> "$out" ;;`,
  `      412) rm -f -- "$dest"; echo "${FETCH_MARK} HTTP 412: its ETag is no longer \${6:-}." >&2; return ${FETCH_CHANGED} ;;`,
  `      4??) echo "${FETCH_MARK} S3 refused $what: $(s3why "$code" "$dest" "$t.err")" >&2; rm -f -- "$dest"; return ${FETCH_REFUSED} ;;`,
  `      *) code="$(s3why "$code" "$dest" "$t.err")"; rm -f -- "$dest" ;;`,
  `    esac`,
  `    now=$(stat -c %s -- "$out" 2>/dev/null || echo 0)`,
  `    if [ "$now" -ge "$want" ]; then break; fi`,
  `    if [ "$now" -gt "$have" ]; then a=0; else a=$(( a + 1 )); fi`,
  `    have=$now`,
  `    case "$code" in 206) code="$(s3why 206 /dev/null "$t.err")" ;; esac`,
  `    if [ "$a" -ge ${ATTEMPTS} ]; then`,
  `      echo "${FETCH_MARK} $what: ${ATTEMPTS} attempts in a row failed at byte $(( from + have )), the last with $code" >&2`,
  `      return ${FETCH_BROKE}`,
  `    fi`,
  `    echo "${FETCH_MARK} retry $what: $code; again from byte $(( from + have ))" >&2`,
  `    [ "$a" = 0 ] || sleep "$a"`,
  `  done`,
  `  rm -f -- "$t" "$t.err"`,
  `}`,
  // One range of the archive into "$dl/$1".
  `range_into() {`,
  `  local from=$(( $1 * range )) to`,
  `  to=$(( from + range - 1 )); [ "$to" -lt "$size" ] || to=$(( size - 1 ))`,
  `  get_bytes "$dl/url" "$from" "$to" "$dl/$1.part" "bytes $from-$to" "$etag" || return`,
  `  mv -f -- "$dl/$1.part" "$dl/$1"`,
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
  `digest() { if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }`,
  // A tree's file N (SHA SIZE MODE PATH URL) into the staging folder, proven by its sha256.
  // One cut short stays as it is: the next run goes on from it (tree/fetch.ts).
  `file_into() {`,
  `  local p="$stage/$5" u="$dl/u.$1" got`,
  `  mkdir -p -- "\${p%/*}"`,
  `  if [ "$3" = 0 ]; then : > "$p"; else`,
  `    printf 'url = "%s"\\n' "$6" > "$u"`,
  `    get_bytes "$u" 0 $(( $3 - 1 )) "$p" "$5" || return`,
  `    rm -f -- "$u"`,
  `  fi`,
  `  got=$(digest < "$p" | cut -d' ' -f1)`,
  `  if [ "$got" != "$2" ]; then`,
  `    rm -f -- "$p"`,
  `    echo "${FETCH_MARK} $5: the stored object's sha256 is $got, not the manifest's $2: the stored snapshot is damaged." >&2`,
  `    return ${FETCH_DAMAGED}`,
  `  fi`,
  `  chmod "$4" "$p"`,
  `  echo "${GOT_LINE} $3" >&4`,
  `}`,
  // `checked`: reads lines `CODE PATH` (curl's word on each transfer) and proves each file by
  // its sha256, 16 at a time in one digest; a proven file gets its mode and a GOT line, and its
  // path goes to "$dl/ok". Of the others, one cut short is kept for the second pass to go on
  // from; one of full size is removed, to be read again there and named damaged if it still
  // does not match.
  `checked() {`,
  `  local code f line h m same`,
  `  local -a batch=() good=()`,
  `  flush() {`,
  `    [ "\${#batch[@]}" -gt 0 ] || return 0`,
  `    good=(); m=; same=1`,
  // openssl prints HASH *NAME, sha256sum HASH  NAME: the name, absolute, follows the first space
  // and a '*' or a space.
  `    while IFS= read -r line; do`,
  `      h=\${line%% *}; f=\${line#* }; f=\${f#[* ]}`,
  `      [ -n "\${wsha[$f]+x}" ] || continue`,
  `      if [ "$h" = "\${wsha[$f]}" ]; then good+=("$f"); m=\${m:-\${wmode[$f]}}; [ "$m" = "\${wmode[$f]}" ] || same=0`,
  `      elif [ "$(stat -c %s -- "$f" 2>/dev/null || echo 0)" -ge "\${wsize[$f]}" ]; then rm -f -- "$f"; fi`,
  `    done < <(digest_files "\${batch[@]}")`,
  `    batch=()`,
  `    [ "\${#good[@]}" -gt 0 ] || return 0`,
  `    if [ "$same" = 1 ]; then chmod "$m" -- "\${good[@]}"; else for f in "\${good[@]}"; do chmod "\${wmode[$f]}" -- "$f"; done; fi`,
  `    for f in "\${good[@]}"; do printf '%s\\n' "$f" >> "$dl/ok"; echo "${GOT_LINE} \${wsize[$f]}" >&4; done`,
  `  }`,
  `  while read -r code f; do`,
  `    if [ -e "$dl/gone" ]; then return 1; fi`,
  `    case "$code" in 2??) ;; *) continue ;; esac`,
  `    [ -n "\${wsha[$f]+x}" ] || continue`,
  `    batch+=("$f")`,
  `    [ "\${#batch[@]}" -lt 16 ] || flush`,
  `  done`,
  `  flush`,
  `}`,
  `digest_files() { if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r "$@"; else sha256sum "$@"; fi; }`,
  // Every file of "$dl/list" (a line SHA SIZE MODE PATH, then its URL). A first pass reads
  // them all with one curl, $conns at once over connections it keeps open, each proven as it
  // lands: a process per file held a 2 GiB tree of 4 MiB tables to half the speed of the
  // same bytes as one archive. What that pass did not prove (a curl without --parallel, a
  // transfer that failed or was cut, a file that did not match) then goes through
  // \`file_into\` one by one, $conns at once, with its retries and its messages: each new one
  // waits for the one started $conns before it (bash's \`wait -n\` misses a job that ended
  // before it was called).
  `tree_fetched() {`,
  `  local sha fsize mode path url p n=0 k=0 st=0`,
  `  local -a pid=() empty=()`,
  `  local -A wsha=() wsize=() wmode=() dirs=() ok=()`,
  `  echo "$BASHPID" > "$dl/reader"`,
  `  : > "$dl/ok"; : > "$dl/all"`,
  `  while IFS=' ' read -r sha fsize mode path && IFS= read -r url; do`,
  `    case "/$path/" in */../*|*/./*|//*) echo "${FETCH_MARK} $path: not a name inside the staging folder" >&2; echo ${FETCH_DAMAGED} > "$dl/status"; return ${FETCH_DAMAGED} ;; esac`,
  `    p="$stage/$path"`,
  `    wsha[$p]=$sha; wsize[$p]=$fsize; wmode[$p]=$mode; dirs[\${p%/*}]=1`,
  `    if [ "$fsize" = 0 ]; then empty+=("$p"); continue; fi`,
  `    p=\${p//\\\\/\\\\\\\\}; p=\${p//\\"/\\\\\\"}`,
  `    printf 'url = "%s"\\noutput = "%s"\\n' "$url" "$p" >> "$dl/all"`,
  `  done < "$dl/list"`,
  `  [ "\${#dirs[@]}" = 0 ] || mkdir -p -- "\${!dirs[@]}"`,
  `  for p in "\${empty[@]}"; do : > "$p"; echo "200 $p"; done > "$dl/empty"`,
  `  if [ -s "$dl/all" ] && curl --parallel --version >/dev/null 2>&1; then`,
  `    { cat -- "$dl/empty"; curl -sS --parallel --parallel-max "$conns" -K "$dl/all" -C - --fail --connect-timeout 20 -y 60 -Y 1024 -w '%{http_code} %{filename_effective}\\n' 2>"$dl/all.err" || true; } | checked`,
  `  else`,
  `    checked < "$dl/empty"`,
  `  fi`,
  `  if [ -e "$dl/gone" ]; then return 1; fi`,
  `  while IFS= read -r p; do ok[$p]=1; done < "$dl/ok"`,
  `  while IFS=' ' read -r sha fsize mode path && IFS= read -r url; do`,
  `    if [ -e "$dl/gone" ]; then return 1; fi`,
  `    [ -z "\${ok[$stage/$path]+x}" ] || continue`,
  `    if [ "$n" -ge "$conns" ]; then wait "\${pid[k]}" || { st=$?; break; }; k=$(( k + 1 )); fi`,
  `    file_into "$n" "$sha" "$fsize" "$mode" "$path" "$url" &`,
  `    pid[n]=$!`,
  `    n=$(( n + 1 ))`,
  `  done < "$dl/list"`,
  `  while [ "$st" = 0 ] && [ "$k" -lt "$n" ]; do wait "\${pid[k]}" || st=$?; k=$(( k + 1 )); done`,
  `  if [ "$st" != 0 ]; then echo "$st" > "$dl/status"; kill "\${pid[@]}" 2>/dev/null || true; wait || true; return "$st"; fi`,
  `}`,
];

/**
 * After the extraction: the read's own failure says more than the decompressor's at the cut,
 * so its status comes first; else the sha256 is printed.
 */
export const FETCH_END = [
  `if [ -n "$dl" ] && [ -s "$dl/status" ]; then exit "$(cat "$dl/status")"; fi`,
];

/** An archive's sha256 line, printed once the checks have passed. */
export const FETCH_REPORT = `if [ "$how" = fetch ]; then echo "${FETCHED_LINE} $(cut -d' ' -f1 "$dl/sum")"; fi`;
