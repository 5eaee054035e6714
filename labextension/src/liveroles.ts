/**
 * Inferred-role markers that follow unsaved edits.
 *
 * The roles the analysis gives untagged cells (an imports-only cell before the
 * first stage, a definition after an `imports` cell) come from the server
 * (`nb2prod/jupyter/panel.py`).  The panel's check sees the saved file; this asks
 * for the notebook's current content once edits settle (`SETTLE_MS` after the
 * last change), sending the cells' sources, types, ids and tags (no outputs), so
 * the markers are right before a save.  Nothing is saved, and the notebook
 * model is only read: the answer changes the markers' DOM, nothing else.
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';

import * as api from './api';
import { StageMarkers } from './markers';

/** Quiet time after the last edit before the content is analysed. */
const SETTLE_MS = 600;

/** The notebook's cells as minimal nbformat 4.5 JSON: what the analysis reads. */
export function analysedContent(panel: NotebookPanel): object {
  const model = panel.content.model;
  const cells: object[] = [];
  if (model) {
    for (let i = 0; i < model.cells.length; i++) {
      const cell = model.cells.get(i);
      const tags = cell.getMetadata('tags');
      cells.push({
        cell_type: cell.type,
        id: cell.id,
        source: cell.sharedModel.getSource(),
        metadata: Array.isArray(tags) ? { tags } : {},
        ...(cell.type === 'code' ? { outputs: [], execution_count: null } : {})
      });
    }
  }
  const metadata: { [key: string]: unknown } = {};
  for (const key of ['kernelspec', 'language_info']) {
    const value = model?.getMetadata(key);
    if (value !== undefined) {
      metadata[key] = value;
    }
  }
  return { cells, metadata, nbformat: 4, nbformat_minor: 5 };
}

/** Keeps one notebook's inferred-role markers in step with its unsaved content. */
export class LiveRoles implements IDisposable {
  constructor(private readonly _panel: NotebookPanel,
              private readonly _markers: StageMarkers,
              private readonly _path: () => string) {
    _panel.content.modelContentChanged.connect(this._changed, this);
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._cancel();
    this._panel.content.modelContentChanged.disconnect(this._changed, this);
  }

  private _changed(): void {
    this._generation += 1;
    this._cancel();
    if (!this._panel.context.isReady) {
      return; // the first load: the panel's check covers it
    }
    this._timer = window.setTimeout(() => void this._ask(), SETTLE_MS);
  }

  private _cancel(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private async _ask(): Promise<void> {
    this._timer = null;
    const generation = this._generation;
    let answer: api.IContentRoles;
    try {
      answer = await api.contentRoles(this._path(), analysedContent(this._panel));
    } catch (error) {
      console.warn('nb2prod: analysing the unsaved notebook failed', error);
      return;
    }
    if (this._disposed || generation !== this._generation) {
      return; // edited again meanwhile: the newer request answers for it
    }
    this._markers.setInferred(answer.inferred_roles);
    this._panel.node.dataset.nb2prodLiveRoles = String(++this._answers);
  }

  private _disposed = false;
  private _timer: number | null = null;
  private _generation = 0;
  private _answers = 0;
}
