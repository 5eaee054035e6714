/**
 * A read-only contents drive for the files of local runs, so a stage's
 * executed notebook opens in JupyterLab instead of downloading.
 *
 * Runs live in the artifact store, by default the hidden
 * `DIR/.nb2prod/artifacts/`, which jupyter_server's contents API does not
 * serve (hidden files); `GET /nb2prod/file` serves exactly the run files, so
 * this drive answers `get` from it.  Paths are `nb2prod-run:<path relative to
 * the server root>`; saving, renaming or deleting is refused: a run's record
 * stays as the run left it ("Save As…" makes an editable copy).
 */
import { Contents, ServerConnection } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';

import { fileUrl } from './api';

export const RUN_DRIVE = 'nb2prod-run';

/** The drive path of a run file (a path relative to the server root). */
export function runFilePath(path: string): string {
  return `${RUN_DRIVE}:${path}`;
}

/** Whether a document path is on this drive. */
export function isRunFile(path: string): boolean {
  return path.startsWith(`${RUN_DRIVE}:`);
}

const READ_ONLY = 'a run\'s executed notebook is read-only: use File → Save Notebook As… for a copy';

export class RunFilesDrive implements Contents.IDrive {
  readonly name = RUN_DRIVE;
  readonly serverSettings = ServerConnection.makeSettings();

  get fileChanged(): ISignal<this, Contents.IChangedArgs> {
    return this._fileChanged;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    this._disposed = true;
    Signal.clearData(this);
  }

  async get(localPath: string, options?: Contents.IFetchOptions): Promise<Contents.IModel> {
    const response = await ServerConnection.makeRequest(fileUrl(localPath), { method: 'GET' },
                                                         this.serverSettings);
    if (!response.ok) {
      throw new ServerConnection.ResponseError(response);
    }
    const notebook = localPath.endsWith('.ipynb');
    const text = await response.text();
    const modified = response.headers.get('Last-Modified');
    const when = modified ? new Date(modified).toISOString() : new Date(0).toISOString();
    return {
      name: localPath.split('/').pop() ?? localPath,
      path: localPath,
      type: notebook ? 'notebook' : 'file',
      format: notebook ? 'json' : 'text',
      content: options?.content === false ? null : notebook ? JSON.parse(text) : text,
      mimetype: notebook ? 'application/x-ipynb+json' : 'text/plain',
      writable: false,
      created: when,
      last_modified: when,
      size: text.length
    };
  }

  async getDownloadUrl(localPath: string): Promise<string> {
    return fileUrl(localPath);
  }

  newUntitled(): Promise<Contents.IModel> {
    return Promise.reject(new Error(READ_ONLY));
  }

  delete(): Promise<void> {
    return Promise.reject(new Error(READ_ONLY));
  }

  rename(): Promise<Contents.IModel> {
    return Promise.reject(new Error(READ_ONLY));
  }

  save(): Promise<Contents.IModel> {
    return Promise.reject(new Error(READ_ONLY));
  }

  copy(): Promise<Contents.IModel> {
    return Promise.reject(new Error(READ_ONLY));
  }

  createCheckpoint(): Promise<Contents.ICheckpointModel> {
    return Promise.reject(new Error(READ_ONLY));
  }

  async listCheckpoints(): Promise<Contents.ICheckpointModel[]> {
    return [];
  }

  restoreCheckpoint(): Promise<void> {
    return Promise.reject(new Error(READ_ONLY));
  }

  deleteCheckpoint(): Promise<void> {
    return Promise.reject(new Error(READ_ONLY));
  }

  private _disposed = false;
  private _fileChanged = new Signal<this, Contents.IChangedArgs>(this);
}
