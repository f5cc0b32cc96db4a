/**
 * A tree's publication, the last step of its backup once every object it names is stored: its
 * manifest, aria2c index and checksum file, then `backup_list`, then the pointer
 * `{SERVICE}.json` that icon2-node's restore reads, when this tree is the newest. A reader of
 * `backup_list` or of the pointer finds every file of the tree there already.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { listEntry, parseArchivePath, type ArchiveName } from '../naming.js';
import { addEntry, updateBackupList } from '../s3/backup-list.js';
import { writeJson } from '../s3/store.js';
import type { S3Settings } from '../settings.js';
import { checksumJson, httpUrl, indexText, pointerJson } from './icon2.js';
import { objectKey, pointerKey, treeFiles, type TreeManifest } from './layout.js';
import { putText } from './store.js';

/** Publishes the tree `manifest` in `folder`; resolves with the URL of its index. */
export async function publishTree(
  client: S3Client,
  s3: S3Settings,
  folder: string,
  name: ArchiveName,
  manifest: TreeManifest,
): Promise<string> {
  const { bucket, prefix } = s3;
  const keys = treeFiles(folder);
  const indexUrl = httpUrl(s3, keys.index, s3.publicUrl);
  const urlOf = (sha: string) => httpUrl(s3, objectKey(prefix, sha), s3.publicUrl);
  await writeJson(client, bucket, keys.manifest, manifest);
  await putText(
    client,
    bucket,
    keys.index,
    indexText(
      manifest.files.map((f) => ({ path: f.path, url: urlOf(f.sha256) })),
      { version: name.date },
    ),
    'text/plain',
  );
  await putText(client, bucket, keys.checksum, checksumJson(manifest.files), 'application/json');
  const entries = await updateBackupList(client, bucket, `${prefix}/backup_list`, (e) =>
    addEntry(e, listEntry(name)),
  );
  core.info(`backup_list now names ${entries.length} snapshot(s); the newest is ${entries[0]}.`);
  // The pointer names the newest tree: a slower run that finishes later does not turn it back.
  const newestTree = entries.find((e) => parseArchivePath(e)?.format === 'tree');
  if (newestTree === listEntry(name)) {
    await putText(
      client,
      bucket,
      pointerKey(prefix, s3.service),
      pointerJson(indexUrl, httpUrl(s3, keys.checksum, s3.publicUrl), {
        snapshot: folder,
        block_height: manifest.blockHeight,
      }),
      'application/json',
    );
    core.info(`${pointerKey(prefix, s3.service)} points at it.`);
  }
  return indexUrl;
}
