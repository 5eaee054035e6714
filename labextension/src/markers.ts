/**
 * Stage markers on code cells.
 *
 * One small coloured label per code cell naming the stage it will run in, so
 * the user sees the effect of a tag (and of Kale's "untagged cells join the
 * stage above" rule) while editing, before splitting.  Recomputed whenever the
 * cell list or any cell's metadata changes; the computation itself is the pure
 * `computeMarkers` in stages.ts, overlaid with the roles the server's analysis
 * gives untagged cells (an untagged imports cell).  Every code cell has a
 * marker, "no stage" included: it is also the cell's role control (a click
 * opens the role menu, rolemenu.ts).
 */
import { Cell } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import { IDisposable } from '@lumino/disposable';
import { PanelLayout, Widget } from '@lumino/widgets';

import { IInferredRole } from './api';

import {
  CellMarker,
  computeMarkers,
  ICellInfo,
  hashedColor,
  rememberStageColors,
  stageColors,
  stageNames
} from './stages';

const MARKER_CLASS = 'nb2prod-StageMarker';
const CELL_CLASS = 'nb2prod-staged';
const PROBLEM_CLASS = 'nb2prod-CellProblem';
const PROBLEM_CELL_CLASS = 'nb2prod-hasProblem';

/** A problem the server reported on a cell (0-based index). */
export interface ICellProblem {
  cell: number;
  message: string;
  text: string;
  severity: 'error' | 'warning';
}

/** Keeps the markers of one notebook panel up to date. */
export class StageMarkers implements IDisposable {
  /** `onMarker`: a click (or Enter) on a cell's marker, e.g. to open the role menu. */
  constructor(panel: NotebookPanel, onMarker?: (cell: Cell, marker: HTMLElement) => void) {
    this._panel = panel;
    this._onMarker = onMarker ?? null;
    panel.content.modelContentChanged.connect(this._schedule, this);
    panel.content.modelChanged.connect(this._schedule, this);
    void panel.context.ready.then(() => this._schedule());
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Show or hide all markers (the `showStageMarkers` setting). */
  set enabled(value: boolean) {
    if (this._enabled !== value) {
      this._enabled = value;
      this._schedule();
    }
  }

  /** The markers as last computed, one per cell (for set-stage suggestions). */
  get markers(): readonly CellMarker[] {
    return this._markers;
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    this._panel.content.modelContentChanged.disconnect(this._schedule, this);
    this._panel.content.modelChanged.disconnect(this._schedule, this);
  }

  /** Recompute now (also used by set-stage so the change shows at once). */
  update(): void {
    if (this._disposed) {
      return;
    }
    const cells = this._panel.content.widgets;
    const infos: ICellInfo[] = cells.map(cell => ({
      cellType: cell.model.type,
      tags: tagsOf(cell)
    }));
    this._markers = computeMarkers(infos).map((marker, i) => this._withInferred(cells[i], i, marker));
    this._colors = stageColors(stageNames(this._markers));
    if (this._panel.isVisible) {
      rememberStageColors(this._colors);
    }
    cells.forEach((cell, i) => {
      this._render(cell, this._enabled && cell.model.type === 'code' ? this._markers[i] : null);
      this._renderProblems(cell, this._problems.get(i) ?? []);
    });
  }

  /**
   * Coalesce bursts of changes (typing in a cell fires content changes on
   * every keystroke; pasting many cells fires one per cell) into one update,
   * and let the notebook create widgets for new cells first.
   */
  private _schedule(): void {
    if (this._disposed || this._timer !== null) {
      return;
    }
    this._timer = window.setTimeout(() => {
      this._timer = null;
      this.update();
    }, 50);
  }

  /**
   * Roles the server found for untagged cells (the last check of the saved
   * notebook, or of its unsaved content once edits settle: liveroles.ts); they
   * replace "no stage" or "joins the stage above" until the next answer, and
   * never a cell's own tag.
   */
  setInferred(roles: readonly IInferredRole[]): void {
    this._inferred = new Map();
    for (const role of roles) {
      this._inferred.set(role.id ?? `#${role.cell}`, role);
    }
    this.update();
  }

  private _withInferred(cell: Cell, index: number, marker: CellMarker): CellMarker {
    const untagged = marker.kind === 'none' || (marker.kind === 'stage' && !marker.start);
    const found = this._inferred.get(cell.model.id) ?? this._inferred.get(`#${index}`);
    if (!untagged || !found) {
      return marker;
    }
    return { kind: 'inferred', role: found.role, scope: found.scope, why: found.why };
  }

  private _render(cell: Cell, marker: CellMarker | null): void {
    let widget = this._widgets.get(cell);
    if (marker === null) {
      if (widget) {
        widget.dispose();
        this._widgets.delete(cell);
      }
      cell.removeClass(CELL_CLASS);
      delete cell.node.dataset.nb2prodStage;
      cell.node.style.removeProperty('--nb2prod-stage-color');
      return;
    }
    if (!widget || widget.isDisposed) {
      widget = new Widget();
      widget.addClass(MARKER_CLASS);
      const node = widget.node;
      node.tabIndex = 0;
      node.setAttribute('role', 'button');
      node.setAttribute('aria-haspopup', 'menu');
      // The notebook selects on mousedown, collapses a selection on mouseup and
      // makes a focused cell active: the menu acts on the selection as it was
      // before the click (no focus by mouse; Tab still reaches the marker).
      node.addEventListener('mousedown', event => {
        event.preventDefault();
        event.stopPropagation();
      });
      node.addEventListener('mouseup', event => event.stopPropagation());
      node.addEventListener('click', event => {
        event.stopPropagation();
        this._onMarker?.(cell, node);
      });
      node.addEventListener('keydown', event => {
        if (event.key === 'Enter' || event.key === ' ') {
          event.preventDefault();
          event.stopPropagation();
          this._onMarker?.(cell, node);
        }
      });
      // A real child widget (not a raw DOM node) so Lumino's index-based
      // layout of the cell stays consistent.
      (cell.layout as PanelLayout).insertWidget(0, widget);
      this._widgets.set(cell, widget);
    }
    const node = widget.node;
    const { text, title, color, variant, stage } = describe(marker, this._colors);
    if (node.textContent !== text) {
      node.textContent = text;
    }
    node.title = `${title}\nClick to set the cell's role.`;
    node.dataset.variant = variant;
    node.dataset.stage = stage ?? '';
    cell.toggleClass(CELL_CLASS, variant !== 'none');
    cell.node.dataset.nb2prodStage = stage ?? '';
    cell.node.style.setProperty('--nb2prod-stage-color', color);
  }

  /** The colour of each stage, as the markers show it (the panel uses the same). */
  get colors(): Map<string, string> {
    return this._colors;
  }

  /**
   * Problems found by the server's last check, shown on their cells until the
   * next check replaces them (`[]` clears them).
   */
  setProblems(problems: readonly ICellProblem[]): void {
    this._problems = new Map();
    for (const problem of problems) {
      const list = this._problems.get(problem.cell) ?? [];
      list.push(problem);
      this._problems.set(problem.cell, list);
    }
    this.update();
  }

  private _renderProblems(cell: Cell, problems: readonly ICellProblem[]): void {
    let widget = this._problemWidgets.get(cell);
    if (!problems.length) {
      if (widget) {
        widget.dispose();
        this._problemWidgets.delete(cell);
      }
      cell.removeClass(PROBLEM_CELL_CLASS);
      return;
    }
    if (!widget || widget.isDisposed) {
      widget = new Widget();
      widget.addClass(PROBLEM_CLASS);
      const layout = cell.layout as PanelLayout;
      const marker = this._widgets.get(cell);
      layout.insertWidget(marker && !marker.isDisposed ? 1 : 0, widget);
      this._problemWidgets.set(cell, widget);
    }
    const severity = problems.some(p => p.severity === 'error') ? 'error' : 'warning';
    widget.node.dataset.severity = severity;
    widget.node.textContent = problems
      .map(p => `${p.severity === 'error' ? '✖' : '⚠'} ${p.message}`)
      .join('\n');
    widget.node.title = problems.map(p => p.text).join('\n');
    cell.addClass(PROBLEM_CELL_CLASS);
  }

  private _panel: NotebookPanel;
  private _onMarker: ((cell: Cell, marker: HTMLElement) => void) | null;
  private _inferred = new Map<string, IInferredRole>();
  private _colors = new Map<string, string>();
  private _problems = new Map<number, ICellProblem[]>();
  private _problemWidgets = new WeakMap<Cell, Widget>();
  private _disposed = false;
  private _enabled = true;
  private _timer: number | null = null;
  private _markers: CellMarker[] = [];
  private _widgets = new WeakMap<Cell, Widget>();
}

/** The tags of a cell model; tolerant of malformed metadata. */
export function tagsOf(cell: Cell): string[] {
  const tags: unknown = cell.model.getMetadata('tags');
  return Array.isArray(tags) ? tags.filter((t): t is string => typeof t === 'string') : [];
}

interface IMarkerView {
  text: string;
  title: string;
  color: string;
  variant: string;
  stage: string | null;
}

function describe(marker: CellMarker, colors: Map<string, string>): IMarkerView {
  switch (marker.kind) {
    case 'stage': {
      const kind = marker.type === 'service' ? 'service' : 'batch';
      const words = [marker.name, ...(marker.type === 'service' ? ['service'] : []),
                     ...(marker.metrics ? ['metrics'] : [])];
      return {
        text: words.join(' · '),
        title: (marker.start
          ? `Starts ${kind} stage '${marker.name}'`
          : `Joins ${kind} stage '${marker.name}' (the stage of the nearest tagged cell above)`) +
          (marker.metrics ? '; the metrics cell: its numbers are recorded as the run\'s metrics' : ''),
        color: colors.get(marker.name) ?? hashedColor(marker.name),
        variant: marker.start ? 'start' : 'continued',
        stage: marker.name
      };
    }
    case 'role':
      return marker.role === 'skip'
        ? {
            text: 'skip',
            title: 'Tagged skip: part of no stage',
            color: 'var(--jp-layout-color4)',
            variant: 'skip',
            stage: null
          }
        : {
            text: `${marker.role} · every stage`,
            title: `Tagged ${marker.role}: copied into every stage`,
            color: 'var(--jp-layout-color4)',
            variant: 'role',
            stage: null
          };
    case 'inferred':
      return {
        text: `${marker.role} · ${marker.scope}`,
        title: marker.why,
        color: 'var(--jp-layout-color4)',
        variant: 'inferred',
        stage: null
      };
    case 'error':
      return {
        text: `⚠ ${marker.message}`,
        title: marker.message,
        color: 'var(--jp-error-color1)',
        variant: 'error',
        stage: marker.stage
      };
    default:
      return {
        text: 'no stage',
        title: 'Untagged, before the first stage tag: in no stage of the pipeline',
        color: 'var(--jp-layout-color4)',
        variant: 'none',
        stage: null
      };
  }
}
