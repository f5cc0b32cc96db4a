/**
 * The HTTP/1.1 of the read client's GETs (socket-get.ts): the request line's target as the SDK
 * signs it, the answer's head, and the errors that the retries (s3/retry.ts) know.
 */
import type { Readable } from 'node:stream';

/** What the SDK hands a request handler (@smithy/types' HttpRequest, the fields a GET uses). */
export interface OutgoingRequest {
  method: string;
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  query?: Record<string, string | string[] | null>;
  headers: Record<string, string>;
  body?: unknown;
  fragment?: string;
  username?: string;
  password?: string;
}

/** What a request handler answers (@smithy/types' HttpResponse). */
export interface IncomingResponse {
  statusCode: number;
  reason?: string;
  headers: Record<string, string>;
  body: Readable;
}

/** An error that the retries (s3/retry.ts) count as a network failure. */
export function networkError(message: string, code = 'ECONNRESET'): Error {
  return Object.assign(new Error(message), { code });
}

export function abortError(): Error {
  return Object.assign(new Error('The request was aborted'), { name: 'AbortError' });
}

/** RFC 3986 escaping, as the SDK signs the query. */
function escape(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** The request's path and query, as the SDK's own handler writes them. */
export function requestTarget(request: OutgoingRequest): string {
  const parts: string[] = [];
  for (const key of Object.keys(request.query ?? {}).sort()) {
    const value = request.query?.[key];
    if (Array.isArray(value)) for (const v of value) parts.push(`${escape(key)}=${escape(v)}`);
    else if (value === null || value === undefined) parts.push(escape(key));
    else parts.push(`${escape(key)}=${escape(value)}`);
  }
  return `${request.path}${parts.length > 0 ? `?${parts.join('&')}` : ''}`;
}

/** The head of an answer: its status line and its headers, names in lower case. */
export interface ResponseHead {
  version: string;
  statusCode: number;
  reason: string;
  headers: Record<string, string>;
}

/** Parses an answer's head (without its blank line); undefined when it is not HTTP/1.x. */
export function parseHead(text: string): ResponseHead | undefined {
  const lines = text.split('\r\n');
  const status = /^HTTP\/(1\.[01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
  if (!status) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return {
    version: status[1] as string,
    statusCode: Number(status[2]),
    reason: status[3] ?? '',
    headers,
  };
}
