/**
 * Everything that reaches a remote shell is built here, as data a unit test can read.
 * Every value from an input or from the host passes through `quote`.
 */

/** Quotes a value for a POSIX shell: the result is always one word, whatever it holds. */
export function quote(value: string): string {
  if (value === '') return "''";
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(value)) return value;
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

/** Joins an argv into one command line, quoting each word. */
export function argv(...words: string[]): string {
  return words.map(quote).join(' ');
}

/**
 * A word on the command line of every shell the action starts on the host (its `$0`), so
 * that a check for the node's processes can leave the action's own out: their scripts name
 * the data dir (`.../data/loopchain`) as the node's do.
 */
export const OWN_MARK = 'prep-snapshot-cmd';

/** Runs a multi-line bash script, whatever the login shell of the remote user is. */
export function bashScript(lines: string[]): string {
  return `bash -c ${quote(['set -eu -o pipefail', ...lines].join('\n'))} ${OWN_MARK}`;
}

/** Escapes a literal for the left side of a `tar --transform` sed expression. */
export function sedLiteral(value: string, delimiter = '|'): string {
  return value
    .replace(/[\\^$.*[\]]/g, (c) => `\\${c}`)
    .split(delimiter)
    .join(`\\${delimiter}`);
}

/** The line that lets a command built by `gated` (or one like it) go ahead. */
export const GO_LINE = 'go\n';

/** The start of a script that waits for `GO_LINE`; an input that ends without it ends the script. */
export const WAIT_FOR_GO = [`IFS= read -r word || exit 0`, `[ "$word" = go ] || exit 0`];

/**
 * `command`, run once `GO_LINE` arrives on stdin; an input that ends without it runs nothing.
 * Its SSH session (a login shell, a round trip or two) is set up before it is needed. The
 * command runs in the user's login shell with nothing on stdin, as an exec of it would.
 */
export function gated(command: string): string {
  const script = [...WAIT_FOR_GO, `exec "\${SHELL:-/bin/sh}" -c ${quote(command)} </dev/null`];
  return `bash -c ${quote(script.join('\n'))}`;
}
