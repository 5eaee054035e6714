/**
 * The Pipeline panel (right sidebar): the active notebook's pipeline as the
 * server sees it, and its local runs.
 *
 * - stages with their cells, inputs/outputs, files, requirements, resources;
 * - the DAG, laid out in the browser by dagre from the very nodes, edges and
 *   states `nb2prod graph` draws (`nb2prod.graph`, sent by the server);
 * - problems and warnings of the last check, listed here and marked on their
 *   cells until the next check;
 * - "Run locally": a detached `nb2prod run` on the server, followed by polling
 *   `GET /nb2prod/runs` (so a reopened tab reattaches), with stage states,
 *   durations, `cached`, metrics, the promotion verdict and links to each
 *   stage's report, executed notebook and log; the past runs; a legend;
 * - the newest deploy, live while it runs (deploy.ts: reattaches on reopen).
 */
import dagre from '@dagrejs/dagre';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { DeploySection } from './deploy';
import { servingSection } from './serving';
import { el, revealCell } from './dialogs';
import { ICellProblem, StageMarkers } from './markers';
import { colorsOfStages, rememberStageColors } from './stages';
import { stoppedText } from './stopnote';

const SVG = 'http://www.w3.org/2000/svg';
/** How often a running run is polled (a condition: the run's own files). */
const POLL_MS = 1000;

/** Fill colour per node state (the same as `nb2prod graph`), and the legend. */
export const STATE_COLORS: { [state: string]: string } = {
  done: '#c8e6c9',
  cached: '#bbdefb',
  failed: '#ffcdd2',
  skipped: '#eeeeee',
  running: '#b2ebf2',
  waiting: '#ffffff',
  stopped: '#ffe0b2'
};


function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: { [name: string]: string | number }
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) {
    node.setAttribute(name, String(value));
  }
  return node;
}

function section(title: string, className: string): HTMLElement {
  const node = el('section', `nb2prod-PanelSection ${className}`);
  node.appendChild(el('h3', 'nb2prod-PanelSection-title', title));
  return node;
}

function numbers(metrics: { [name: string]: number } | undefined): string {
  return Object.entries(metrics ?? {})
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => `${k}=${Number(v.toPrecision(4))}`)
    .join(', ');
}

/** The text lines of a DAG node: name, then state/kind, then metrics (as graph.py). */
export function nodeLines(node: api.IGraphNode): string[] {
  const lines = [node.name];
  if (node.state === null) {
    lines.push(node.kind);
  } else if (node.state === 'cached' || node.cached_from) {
    lines.push(node.cached_from ? `cached (run ${node.cached_from})` : 'cached');
  } else {
    lines.push(node.state + (node.seconds !== null ? ` ${node.seconds.toFixed(1)}s` : ''));
  }
  for (const [k, v] of Object.entries(node.metrics).sort()) {
    lines.push(`${k}=${Number(v.toPrecision(4))}`);
  }
  return lines;
}

/**
 * The DAG as an SVG: dagre lays it out (top to bottom), batch stages are
 * rounded boxes, service stages ellipses, filled by state, edged in the
 * stage's colour; edges carry the names passed.  `onNode` gets a click.
 */
export function drawGraph(
  graph: api.IGraph,
  colors: Map<string, string>,
  onNode: (name: string) => void
): SVGSVGElement {
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: 'TB', nodesep: 24, ranksep: 36, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  const lineHeight = 14;
  for (const node of graph.nodes) {
    const lines = nodeLines(node);
    const width = Math.max(...lines.map(l => l.length)) * 7 + 24;
    g.setNode(node.name, { width, height: lines.length * lineHeight + 14 });
  }
  for (const edge of graph.edges) {
    if (g.hasNode(edge.source) && g.hasNode(edge.target)) {
      const label = [...edge.names, ...edge.files].join(', ');
      g.setEdge(edge.source, edge.target, {
        label,
        width: label ? Math.min(label.length, 28) * 6 : 0,
        height: label ? 12 : 0,
        labelpos: 'c'
      });
    }
  }
  dagre.layout(g);
  const size = g.graph();
  const root = svg('svg', {
    class: 'nb2prod-Dag',
    width: Math.ceil(size.width ?? 0),
    height: Math.ceil(size.height ?? 0),
    viewBox: `0 0 ${Math.ceil(size.width ?? 0)} ${Math.ceil(size.height ?? 0)}`
  });
  const defs = svg('defs', {});
  const marker = svg('marker', {
    id: 'nb2prod-arrow', viewBox: '0 0 10 10', refX: 9, refY: 5,
    markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse'
  });
  marker.appendChild(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'nb2prod-Dag-arrow' }));
  defs.appendChild(marker);
  root.appendChild(defs);
  for (const e of g.edges()) {
    const info = g.edge(e) as any;
    const points = (info.points ?? []) as { x: number; y: number }[];
    const d = points.map((p, i) => `${i ? 'L' : 'M'} ${p.x} ${p.y}`).join(' ');
    const group = svg('g', { class: 'nb2prod-DagEdge', 'data-source': e.v, 'data-target': e.w });
    const path = svg('path', { d, 'marker-end': 'url(#nb2prod-arrow)' });
    if (!info.label) {
      path.setAttribute('stroke-dasharray', '4 3');
    }
    group.appendChild(path);
    if (info.label && info.x !== undefined) {
      const text = svg('text', { x: info.x, y: info.y + 4, 'text-anchor': 'middle' });
      text.textContent = info.label.length > 28 ? info.label.slice(0, 27) + '…' : info.label;
      const title = svg('title', {});
      title.textContent = info.label;
      text.appendChild(title);
      group.appendChild(text);
    }
    root.appendChild(group);
  }
  for (const node of graph.nodes) {
    const box = g.node(node.name);
    const state = node.cached_from ? 'cached' : node.state ?? '';
    const group = svg('g', {
      class: 'nb2prod-DagNode',
      'data-stage': node.name,
      'data-kind': node.kind,
      'data-state': state,
      transform: `translate(${box.x - box.width / 2}, ${box.y - box.height / 2})`
    });
    const fill = STATE_COLORS[state] ?? STATE_COLORS.waiting;
    const stroke = colors.get(node.name) ?? '#616161';
    const shape =
      node.kind === 'service'
        ? svg('ellipse', {
            cx: box.width / 2, cy: box.height / 2, rx: box.width / 2, ry: box.height / 2,
            fill, stroke, 'stroke-width': 2.5
          })
        : svg('rect', {
            width: box.width, height: box.height, rx: 6, fill, stroke, 'stroke-width': 2.5
          });
    group.appendChild(shape);
    nodeLines(node).forEach((line, i) => {
      const text = svg('text', {
        x: box.width / 2,
        y: 7 + (i + 1) * lineHeight - 3,
        'text-anchor': 'middle',
        class: i === 0 ? 'nb2prod-DagNode-name' : 'nb2prod-DagNode-detail'
      });
      text.textContent = line;
      group.appendChild(text);
    });
    const title = svg('title', {});
    title.textContent = `${node.name} (${node.kind})${node.message ? ': ' + node.message : ''} — click to go to its first cell`;
    group.appendChild(title);
    group.addEventListener('click', () => onNode(node.name));
    root.appendChild(group);
  }
  return root;
}

/**
 * Whether the newest launch still works for the user, i.e. the header shows
 * "Running…" / "Serving…" and Stop: its process runs and its run record (run.json)
 * has not ended.  The process outlives its run for a moment (writing the report,
 * exiting), so a batch run's record is the truth as soon as it says succeeded or
 * failed; a serving launch keeps its services up after the batch stages succeed.
 */
export function launchBusy(runs: api.IRuns | null): boolean {
  const launch = runs?.launches[0];
  if (!runs || !launch || launch.state !== 'running') {
    return false;
  }
  const record = launch.run_id ? runs.runs.find(r => r.run_id === launch.run_id) : undefined;
  if (!record || record.status === 'running') {
    return true;
  }
  return launch.serve && !RUN_FAILED.has(record.status);
}

/** The graph with a running deploy's stage states (null: as it is), like a local run's. */
export function withDeployStates(graph: api.IGraph | null,
                                 deploy: api.IDeployStatus | null): api.IGraph | null {
  if (!graph || !deploy) {
    return graph;
  }
  const states = new Map(deploy.stages.map(s => [s.name, s.state]));
  return {
    ...graph,
    run_id: deploy.run_id,
    nodes: graph.nodes.map(n => ({
      ...n, state: states.get(n.name) ?? 'waiting', cached_from: null, seconds: null,
      metrics: {}, message: ''
    }))
  };
}

/** Run statuses after which a serving launch has nothing up any more. */
const RUN_FAILED = new Set(['failed', 'interrupted', 'stopped']);

/** The panel widget; `notebook` follows the active notebook. */
/** The Port field's placeholder: the configured port of the service stage(s), "per
 * stage" when they differ, "PORT" before the server said. */
export function portPlaceholder(ports: { [stage: string]: number }): string {
  const distinct = [...new Set(Object.values(ports))];
  return distinct.length === 1 ? String(distinct[0])
    : distinct.length > 1 ? 'per stage' : 'PORT';
}

export class PipelinePanel extends Widget {
  /** `openNotebook` opens a run's executed notebook (a path relative to the server root). */
  constructor(private readonly _markers: Map<NotebookPanel, StageMarkers>,
              private readonly _serverPath: (panel: NotebookPanel) => string,
              private readonly _openNotebook: (path: string) => void) {
    super();
    this.id = 'nb2prod-pipeline-panel';
    this.addClass('nb2prod-PipelinePanel');
    this.title.caption = 'nb2prod: pipeline of the active notebook';
    this.node.tabIndex = -1;
    this._body = el('div', 'nb2prod-PanelBody');
    this.node.appendChild(this._body);
    this._deploys = new DeploySection(cell => this._goTo(cell), () => this._render());
    this._renderEmpty('Open a notebook to see its pipeline.');
  }

  /** The notebook the panel shows (null: none open). */
  get notebook(): NotebookPanel | null {
    return this._notebook;
  }

  set notebook(panel: NotebookPanel | null) {
    if (panel === this._notebook) {
      return;
    }
    if (this._notebook) {
      this._notebook.context.saveState.disconnect(this._onSave, this);
    }
    this._notebook = panel;
    this._info = null;
    this._runs = null;
    this._selectedRun = null;
    this._stopPolling();
    this._deploys.stop();
    if (panel) {
      panel.context.saveState.connect(this._onSave, this);
      void panel.context.ready.then(() => this.refresh());
    } else {
      this._renderEmpty('Open a notebook to see its pipeline.');
    }
  }

  /** Check the notebook on the server and reload its runs. */
  async refresh(): Promise<void> {
    const panel = this._notebook;
    if (!panel) {
      return;
    }
    const path = this._serverPath(panel);
    this.node.dataset.loading = 'true';
    void this._deploys.load(path);
    try {
      const [info, runs] = await Promise.all([
        api.pipelineInfo(path),
        api.runs(path, this._selectedRun ?? undefined)
      ]);
      if (panel !== this._notebook) {
        return;
      }
      this._info = info;
      this._runs = runs;
      this._error = null;
      this.node.dataset.checks = String(++this._checks); // how many checks it has shown
      this._markProblems();
      if (runs.launches[0]?.state === 'running') {
        this._startPolling();
      }
    } catch (error) {
      this._error = String((error as Error).message ?? error);
    } finally {
      delete this.node.dataset.loading;
    }
    this._render();
  }

  /** Start a local run of the (saved) notebook (`serve`: and keep its services up), then
   * follow it. */
  async runLocally(serve = false): Promise<void> {
    const panel = this._notebook;
    if (!panel) {
      return;
    }
    if (panel.context.model.dirty) {
      await panel.context.save();
    }
    this._runError = null;
    this._selectedRun = null;
    try {
      await api.startRun(this._serverPath(panel), serve, serve ? this._port : '');
    } catch (error) {
      this._runError = error instanceof api.ApiError
        ? error.problems.map(p => p.text ?? p.message).join('\n')
        : String(error);
      this._render();
      return;
    }
    await this._poll();
    this._startPolling();
  }

  protected onBeforeHide(): void {
    this._stopPolling();
    this._deploys.stop();
  }

  protected onAfterShow(): void {
    if (this._runs?.launches[0]?.state === 'running') {
      this._startPolling();
    }
    this._deploys.resume();
  }

  private _onSave(_: unknown, state: string): void {
    if (state === 'completed') {
      void this.refresh();
    }
  }

  private _markProblems(): void {
    const markers = this._notebook ? this._markers.get(this._notebook) : undefined;
    if (!markers || !this._info) {
      return;
    }
    const found: ICellProblem[] = [];
    const add = (list: api.IPanelProblem[], severity: 'error' | 'warning'): void => {
      for (const p of list) {
        if (p.cell !== null && p.cell !== undefined) {
          found.push({ cell: p.cell, message: p.message, text: p.text ?? p.message, severity });
        }
      }
    };
    add(this._info.problems, 'error');
    add(this._info.warnings, 'warning');
    markers.setProblems(found);
    if (!this._notebook?.context.model.dirty) { // else the roles of the unsaved content
      markers.setInferred(this._info.inferred_roles ?? []); // (liveroles.ts) are newer
    }
  }

  private _startPolling(): void {
    if (this._timer === null && this.isVisible) {
      this._timer = window.setInterval(() => void this._poll(), POLL_MS);
    }
  }

  private _stopPolling(): void {
    if (this._timer !== null) {
      window.clearInterval(this._timer);
      this._timer = null;
    }
  }

  private async _poll(): Promise<void> {
    const panel = this._notebook;
    if (!panel || this._polling) {
      return;
    }
    this._polling = true;
    try {
      const runs = await api.runs(this._serverPath(panel), this._selectedRun ?? undefined);
      if (panel === this._notebook) {
        const changed = JSON.stringify(runs) !== JSON.stringify(this._runs);
        this._runs = runs;
        if (runs.launches[0]?.state !== 'running') {
          this._stopPolling();
        }
        if (changed) { // a serving run polls for long: keep a selected curl selected
          this._render();
        }
      }
    } catch (error) {
      console.warn('nb2prod: polling runs failed', error);
    } finally {
      this._polling = false;
    }
  }

  private _renderEmpty(text: string): void {
    this._body.replaceChildren(el('p', 'nb2prod-Panel-empty', text));
  }

  private _goTo(cell: number): void {
    if (this._notebook) {
      void revealCell(this._notebook.content, cell);
    }
  }

  private _render(): void {
    const panel = this._notebook;
    if (!panel) {
      this._renderEmpty('Open a notebook to see its pipeline.');
      return;
    }
    const body = this._body;
    const scroll = body.scrollTop;
    const typing = document.activeElement?.classList.contains('nb2prod-RunPort') ?? false;
    body.replaceChildren();
    const info = this._info;
    const header = el('div', 'nb2prod-PanelHeader');
    header.appendChild(el('span', 'nb2prod-PanelHeader-name', info?.notebook ?? panel.context.path));
    const check = el('button', 'jp-Button jp-mod-styled jp-mod-reject nb2prod-PanelCheck', 'Check');
    check.title = 'Analyse the saved notebook again (nb2prod check)';
    check.addEventListener('click', () => void this.refresh());
    const launch = this._runs?.launches[0];
    const running = launchBusy(this._runs);
    const exiting = !running && launch?.state === 'running';
    const run = el('button', 'jp-Button jp-mod-styled jp-mod-accept nb2prod-RunLocally',
                   running ? (launch?.services?.length ? 'Serving…' : 'Running…')
                     : 'Run locally');
    run.title = exiting ? 'The last run has ended; its process is exiting'
      : 'Save, split and run the batch stages here (nb2prod run --no-serve)';
    run.disabled = running || exiting || !info || info.problems.length > 0;
    run.addEventListener('click', () => void this.runLocally());
    const serve = el('button', 'jp-Button jp-mod-styled jp-mod-reject nb2prod-RunServe',
                     'Run and serve');
    serve.title = 'Save, split, run, then keep the service stages up here until Stop (nb2prod run)';
    serve.disabled = run.disabled;
    serve.addEventListener('click', () => void this.runLocally(true));
    header.append(check, run, serve);
    if (info?.stages.some(s => s.type === 'service')) {
      header.appendChild(this._portField(serve.disabled, info.service_ports ?? {}));
    }
    if (running && launch) {
      const stop = el('button', 'jp-Button jp-mod-styled jp-mod-warn nb2prod-RunStop', 'Stop');
      stop.addEventListener('click', () => {
        void api.stopRun(this._serverPath(panel), launch.id).then(() => this._poll());
      });
      header.appendChild(stop);
    }
    body.appendChild(header);
    if (this._error) {
      body.appendChild(el('p', 'nb2prod-Panel-error', this._error));
    }
    if (!info) {
      body.appendChild(el('p', 'nb2prod-Panel-empty', 'Checking…'));
      return;
    }
    const colors = colorsOfStages(info.stages);
    rememberStageColors(colors);
    this._renderProblems(body, info);
    this._renderRun(body, colors);
    if (launch?.state === 'running' && launch.services?.length) {
      body.appendChild(servingSection(launch));
    }
    body.appendChild(this._deploys.node);
    this._renderStages(body, info, colors);
    this._renderRuns(body);
    this._renderLegend(body);
    body.scrollTop = scroll;
    if (typing) { // a render while typing a port keeps the field focused
      body.querySelector<HTMLInputElement>('.nb2prod-RunPort')?.focus();
    }
  }

  /** "Port" of "Run and serve" (`nb2prod run --port`); empty: each service stage's
   * config.ini PORT.  The server checks it (1-65535, free) and says what is wrong. */
  private _portField(disabled: boolean, ports: { [stage: string]: number }): HTMLElement {
    const label = el('label', 'nb2prod-RunPortLabel', 'Port ');
    const input = el('input', 'jp-mod-styled nb2prod-RunPort');
    input.type = 'text';
    input.inputMode = 'numeric';
    input.size = 6;
    input.name = 'port';
    input.placeholder = portPlaceholder(ports);
    input.title = 'Port of the (first) service stage for "Run and serve"; empty: its ' +
      'config.ini PORT (nb2prod run --port)';
    input.value = this._port;
    input.disabled = disabled;
    input.addEventListener('input', () => {
      this._port = input.value;
    });
    input.addEventListener('keydown', event => {
      if (event.key === 'Enter' && !input.disabled) {
        void this.runLocally(true);
      }
    });
    label.appendChild(input);
    return label;
  }

  private _renderProblems(body: HTMLElement, info: api.IPipelineInfo): void {
    const all = [
      ...info.problems.map(p => ({ ...p, severity: 'error' })),
      ...info.warnings.map(p => ({ ...p, severity: 'warning' }))
    ];
    if (!all.length) {
      return;
    }
    const node = section(
      `${info.problems.length} error(s), ${info.warnings.length} warning(s)`,
      'nb2prod-PanelProblems'
    );
    const list = el('ul', 'nb2prod-Problems');
    for (const problem of all) {
      const item = el('li', 'nb2prod-Problem');
      item.dataset.severity = problem.severity;
      item.appendChild(el('span', 'nb2prod-Problem-text', problem.text ?? problem.message));
      if (problem.cell !== null && problem.cell !== undefined) {
        const cell = problem.cell;
        const go = el('button', 'jp-Button jp-mod-styled jp-mod-reject nb2prod-GoToCell',
                      `Go to cell ${cell + 1}`);
        go.addEventListener('click', () => this._goTo(cell));
        item.appendChild(go);
      }
      list.appendChild(item);
    }
    node.appendChild(list);
    body.appendChild(node);
  }

  /** The DAG with the selected (default: newest) run's states, and that run's table. */
  private _renderRun(body: HTMLElement, colors: Map<string, string>): void {
    const info = this._info!;
    const runs = this._runs;
    const graph = withDeployStates(runs?.graph ?? info.graph, this._deploys.running);
    const node = section('Pipeline', 'nb2prod-PanelGraph');
    if (graph) {
      const firstCell = new Map(info.stages.map(s => [s.name, Math.min(...s.cells)]));
      node.appendChild(drawGraph(graph, colors, name => {
        const cell = firstCell.get(name);
        if (cell !== undefined && Number.isFinite(cell)) {
          this._goTo(cell);
        }
      }));
    } else {
      node.appendChild(el('p', 'nb2prod-Panel-empty', 'No pipeline until the errors are fixed.'));
    }
    body.appendChild(node);
    const launch = runs?.launches[0];
    if (this._runError) {
      body.appendChild(el('pre', 'nb2prod-Panel-error nb2prod-RunError', this._runError));
    }
    const record = this._shownRun();
    if (!record) {
      if (launch?.state === 'running') {
        body.appendChild(el('p', 'nb2prod-RunStatus', 'Starting the run…'));
      } else if (launch?.stopped) { // stopped before its run had a record
        const note = el('p', 'nb2prod-RunStatus', stoppedText(launch.stopped));
        note.dataset.status = 'stopped';
        body.appendChild(note);
      } else if (launch && launch.exit_code !== 0) {
        body.appendChild(el('pre', 'nb2prod-Panel-error nb2prod-RunOutput', launch.output));
      }
      return;
    }
    const summary = section(`Run ${record.run_id}`, 'nb2prod-RunSection');
    summary.dataset.status = record.status;
    summary.dataset.run = record.run_id;
    const status = el('p', 'nb2prod-RunStatus');
    status.dataset.status = record.status;
    const verdict = record.promoted ? 'promoted to latest'
      : record.status === 'running' ? ''
        : record.status === 'stopped' ? record.reason.replace(/^stopped /, '')
          : record.verdict || record.reason || 'not promoted';
    status.textContent = [record.status, record.seconds !== null ? `${record.seconds}s` : '',
                          verdict].filter(Boolean).join(' · ');
    summary.appendChild(status);
    if (launch?.serve && launch.stopped && launch.state === 'exited' &&
        launch.run_id === record.run_id && record.status !== 'stopped') {
      // its batch run had ended; Stop ended the services it kept up
      summary.appendChild(el('p', 'nb2prod-RunServingStopped',
                             `Services ${stoppedText(launch.stopped)}`));
    }
    const table = el('table', 'nb2prod-RunStages');
    const head = table.createTHead().insertRow();
    for (const title of ['stage', 'state', 'time', 'metrics']) {
      head.appendChild(el('th', '', title));
    }
    const tbody = table.createTBody();
    for (const [name, stage] of Object.entries(record.stages)) {
      const row = tbody.insertRow();
      row.className = 'nb2prod-RunStage';
      row.dataset.stage = name;
      const state = stage.cached_from ? 'cached' : stage.status ?? '';
      row.dataset.state = state;
      // the stage's report, notebook and log under its name: four narrow
      // columns fit the sidebar without breaking words
      const first = row.insertCell();
      first.appendChild(el('span', 'nb2prod-RunStage-name', name));
      const links = el('div', 'nb2prod-RunStage-links');
      first.appendChild(links);
      const stateCell = row.insertCell();
      stateCell.textContent = stage.cached_from ? `cached (run ${stage.cached_from})` : state;
      stateCell.title = stage.message || stage.reason || '';
      row.insertCell().textContent = stage.seconds !== undefined ? `${stage.seconds.toFixed(1)}s` : '';
      // a narrow sidebar may break `accuracy=0.9667` after the '=' (zero-width space)
      row.insertCell().textContent = numbers(record.metrics[name]).replace(/=/g, '=\u200b');
      for (const [label, key] of [['report', 'html'], ['notebook', 'notebook'], ['log', 'log']] as const) {
        const path = stage.files[key];
        if (path) {
          const a = el('a', `nb2prod-RunLink nb2prod-RunLink-${key}`, label);
          a.href = api.fileUrl(path);
          a.target = '_blank';
          a.rel = 'noopener';
          if (key === 'notebook') {
            // opened in JupyterLab (read-only), not downloaded
            a.title = 'Open the executed notebook in JupyterLab (read-only)';
            a.addEventListener('click', event => {
              event.preventDefault();
              this._openNotebook(path);
            });
          }
          links.appendChild(a);
        }
      }
      if (stage.message && (state === 'failed' || state === 'stopped')) {
        const detail = tbody.insertRow();
        const cell = detail.insertCell();
        cell.colSpan = 4;
        cell.className = 'nb2prod-RunStage-message';
        cell.textContent = stage.message;
      }
    }
    summary.appendChild(table);
    if (launch?.log && launch.run_id === record.run_id) {
      const a = el('a', 'nb2prod-RunLink nb2prod-RunLink-console', 'console output');
      a.href = api.fileUrl(launch.log);
      a.target = '_blank';
      a.rel = 'noopener';
      summary.appendChild(a);
    }
    body.appendChild(summary);
  }

  private _shownRun(): api.IRun | null {
    const runs = this._runs?.runs ?? [];
    if (this._selectedRun) {
      return runs.find(r => r.run_id === this._selectedRun) ?? null;
    }
    const launch = this._runs?.launches[0];
    if (launch && launch.state === 'running' && launch.run_id === null) {
      return null; // starting: the newest run is an older one
    }
    return runs[0] ?? null;
  }

  private _renderStages(body: HTMLElement, info: api.IPipelineInfo, colors: Map<string, string>): void {
    if (!info.stages.length) {
      return;
    }
    const node = section('Stages', 'nb2prod-PanelStages');
    for (const stage of info.stages) {
      const item = el('div', 'nb2prod-PanelStage');
      item.dataset.stage = stage.name;
      const name = el('span', 'nb2prod-Stage-name', stage.name);
      name.style.setProperty('--nb2prod-stage-color', colors.get(stage.name) ?? '');
      const title = el('div', 'nb2prod-PanelStage-title');
      title.append(name, el('span', 'nb2prod-PanelStage-type', ` ${stage.type}`));
      item.appendChild(title);
      const cells = el('div', 'nb2prod-PanelStage-cells', 'cells ');
      for (const index of stage.cells) {
        const link = el('button', 'nb2prod-CellLink', String(index + 1));
        link.title = `Go to cell ${index + 1}`;
        link.addEventListener('click', () => this._goTo(index));
        cells.appendChild(link);
      }
      item.appendChild(cells);
      const facts: [string, string][] = [
        ['inputs', Object.entries(stage.inputs).map(([n, p]) => `${n} ← ${p}`).join(', ')],
        ['outputs', stage.outputs.join(', ')],
        ['files', [...stage.files, ...Object.keys(stage.file_inputs)].join(', ')],
        ['requirements', stage.requirements.join('\n')],
        ['resources', Object.entries(stage.resources).map(([k, v]) => `${k}=${v}`)
          .concat(stage.secrets).join(', ')]
      ];
      const dl = el('dl', 'nb2prod-PanelStage-facts');
      for (const [label, value] of facts) {
        if (value) {
          dl.append(el('dt', '', label), el('dd', `nb2prod-PanelStage-${label}`, value));
        }
      }
      item.appendChild(dl);
      node.appendChild(item);
    }
    if (info.no_stage.length) {
      node.appendChild(el('p', 'nb2prod-PanelStage-none',
        `In no stage: cells ${info.no_stage.map(n => n.position).join(', ')}`));
    }
    body.appendChild(node);
  }

  private _renderRuns(body: HTMLElement): void {
    const runs = this._runs?.runs ?? [];
    if (!runs.length) {
      return;
    }
    const node = section('Past runs', 'nb2prod-PanelRuns');
    const list = el('ul', 'nb2prod-RunList');
    for (const run of runs.slice(0, 20)) {
      const item = el('li', 'nb2prod-RunItem');
      item.dataset.run = run.run_id;
      item.dataset.status = run.status;
      const shown = this._shownRun();
      if (shown && shown.run_id === run.run_id) {
        item.classList.add('nb2prod-mod-shown');
      }
      const metrics = Object.values(run.metrics).map(m => numbers(m)).filter(Boolean).join(', ');
      const button = el('button', 'nb2prod-RunItem-button',
        `${run.run_id} · ${run.status}${run.latest ? ' · latest' : ''}` +
        `${run.verdict ? ' · not promoted' : ''}${metrics ? ' · ' + metrics : ''}`);
      button.title = run.reason || 'Show this run in the graph';
      button.addEventListener('click', () => {
        this._selectedRun = run.run_id;
        void this.refresh();
      });
      item.appendChild(button);
      list.appendChild(item);
    }
    node.appendChild(list);
    body.appendChild(node);
  }

  private _renderLegend(body: HTMLElement): void {
    const node = section('Legend', 'nb2prod-PanelLegend');
    const list = el('ul', 'nb2prod-Legend');
    for (const [state, color] of Object.entries(STATE_COLORS)) {
      const item = el('li', 'nb2prod-Legend-item');
      const swatch = el('span', 'nb2prod-Legend-swatch');
      swatch.style.background = color;
      item.append(swatch, document.createTextNode(state));
      list.appendChild(item);
    }
    for (const [text, kind] of [['batch stage', 'batch'], ['service stage', 'service']]) {
      const item = el('li', 'nb2prod-Legend-item');
      item.append(el('span', `nb2prod-Legend-shape nb2prod-Legend-${kind}`),
                  document.createTextNode(text));
      list.appendChild(item);
    }
    const dashed = el('li', 'nb2prod-Legend-item');
    dashed.append(el('span', 'nb2prod-Legend-dashed'),
                  document.createTextNode('after: (no data passed)'));
    list.appendChild(dashed);
    node.appendChild(list);
    node.appendChild(el('p', 'nb2prod-Legend-note',
      'Outline: the stage colour of its cells. Click a stage to go to its first cell.'));
    body.appendChild(node);
  }

  private _notebook: NotebookPanel | null = null;
  private _info: api.IPipelineInfo | null = null;
  private _runs: api.IRuns | null = null;
  private _selectedRun: string | null = null;
  private _error: string | null = null;
  private _runError: string | null = null;
  /** the Port field's text (kept across renders) */
  private _port = '';
  private _timer: number | null = null;
  private _polling = false;
  private _checks = 0;
  private _body: HTMLElement;
  private _deploys: DeploySection;
}
