/**
 * Deploy progress: the dialog shown after "Deploy…" and the Pipeline panel's
 * "Deploy" section, both drawn by `renderDeploy` from the same status.
 *
 * A deploy is a detached `nb2prod deploy` process on the server, recorded on
 * disk (`nb2prod/jupyter/deploys.py`): closing the dialog or the tab only
 * stops watching.  The panel asks for the notebook's deploys whenever it
 * (re)loads, so a reopened tab, even after a server restart, reattaches to a
 * deploy in progress and follows it live until it ends.
 */
import { Notebook } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import * as api from './api';
import { el, problemList, showWithCells } from './dialogs';
import { stoppedText } from './stopnote';
import { stageColor } from './stages';

/** How often a running deploy is polled (its record and event log on the server). */
const POLL_MS = 1000;
/** Failed polls in a row (a server restarting) before saying the deploy is lost. */
const MAX_FAILURES = 30;

const WORDS: { [state: string]: string } = {
  running: 'Deploying',
  done: 'Deployed',
  failed: 'Deploy failed',
  stopped: 'Deploy stopped'
};

/** A stage's row; `compact` (the narrow panel): its message on a row of its own below. */
function stageRows(
  stage: api.IStageStatus,
  compact: boolean,
  onGo: (cell: number) => void
): HTMLTableRowElement[] {
  const row = el('tr', 'nb2prod-DeployStage');
  row.dataset.stage = stage.name;
  row.dataset.state = stage.state;
  const name = row.insertCell();
  const badge = el('span', 'nb2prod-Stage-name', stage.name);
  badge.style.setProperty('--nb2prod-stage-color', stageColor(stage.name));
  name.appendChild(badge);
  const state = row.insertCell();
  state.appendChild(el('span', `nb2prod-State nb2prod-State-${stage.state}`, stage.state));
  row.insertCell().textContent = stage.elapsed ? `${stage.elapsed.toFixed(0)} s` : '';
  const rows = [row];
  let message: HTMLTableCellElement;
  if (compact) {
    const below = el('tr', 'nb2prod-DeployStage-messageRow');
    message = below.insertCell();
    message.colSpan = 3;
    if (stage.message || typeof stage.cell === 'number') {
      rows.push(below);
    }
  } else {
    message = row.insertCell();
  }
  message.className = `nb2prod-DeployStage-message nb2prod-DeployStage-message-${stage.state}`;
  message.textContent = stage.message;
  const cell = stage.cell;
  if (typeof cell === 'number') { // a failed stage's cell: go and fix it
    const go = el('button', 'jp-Button jp-mod-styled jp-mod-reject nb2prod-GoToCell',
                  `Go to cell ${cell + 1}`);
    go.addEventListener('click', () => onGo(cell));
    message.append(' ', go);
  }
  return rows;
}

/** Summary, failure reason (red), stage table, services and problems of a deploy. */
export function renderDeploy(
  node: HTMLElement,
  status: api.IDeployStatus,
  onGo: (cell: number) => void,
  compact = false
): void {
  node.dataset.state = status.state;
  node.dataset.deploy = status.id;
  const where = `pipeline ${status.pipeline} → namespace ${status.namespace}` +
    (status.context ? ` (context ${status.context})` : '');
  const run = status.run_id ? `run ${status.run_id}, ` : '';
  const parts: HTMLElement[] = [
    el('p', 'nb2prod-DeployProgress-summary',
       `${WORDS[status.state] ?? status.state}: ${where} (${run}${status.elapsed.toFixed(0)} s)`)
  ];
  if (status.error) {
    parts.push(el('p', 'nb2prod-DeployError', status.error));
  }
  if (status.following) { // the deploy process was killed; its Jobs still run
    parts.push(el('p', 'nb2prod-DeployFollowing', status.following));
  }
  if (status.state === 'stopped' && status.stopped) {
    parts.push(el('p', 'nb2prod-DeployStoppedBy', stoppedText(status.stopped)));
  }
  const table = el('table', 'nb2prod-Stages nb2prod-DeployStages');
  const head = table.createTHead().insertRow();
  for (const title of ['Stage', 'State', 'Elapsed', ...(compact ? [] : ['Message'])]) {
    head.appendChild(el('th', '', title));
  }
  const body = table.createTBody();
  for (const stage of status.stages) {
    body.append(...stageRows(stage, compact, onGo));
  }
  parts.push(table);
  for (const [name, service] of Object.entries(status.services ?? {})) {
    if (service.status !== 'serving' || !service.url) {
      continue;
    }
    const item = el('div', 'nb2prod-DeployService');
    item.dataset.service = name;
    item.append(`${name} is serving at `, el('code', '', service.url));
    if (service.proxy_url) {
      item.append(el('br', ''), 'through the API server: ', el('code', '', service.proxy_url));
    }
    parts.push(item);
  }
  if (status.problems.length) {
    parts.push(problemList(status.problems, onGo));
  }
  if (status.log && status.state !== 'running') {
    const a = el('a', 'nb2prod-RunLink nb2prod-DeployLog', 'console output');
    a.href = api.fileUrl(status.log);
    a.target = '_blank';
    a.rel = 'noopener';
    parts.push(a);
  }
  node.replaceChildren(...parts);
}

/**
 * Follows one deploy: `show` gets every status until the deploy ends; a
 * server that does not answer for a while (restarting) is retried.
 */
class Follower {
  constructor(private readonly _show: (status: api.IDeployStatus) => void,
              private readonly _lost: (why: string) => void) {}

  follow(path: string, status: api.IDeployStatus): void {
    this.stop();
    this._path = path;
    this._id = status.id;
    this._failures = 0;
    if (status.state === 'running') {
      this._schedule();
    }
  }

  stop(): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _schedule(): void {
    this._timer = window.setTimeout(() => void this._tick(), POLL_MS);
  }

  private async _tick(): Promise<void> {
    this._timer = null;
    const id = this._id;
    try {
      const status = await api.deployStatus(this._path, id);
      if (id !== this._id) {
        return;
      }
      this._failures = 0;
      this._show(status);
      if (status.state === 'running') {
        this._schedule();
      }
    } catch (error) {
      this._failures += 1;
      if (this._failures < MAX_FAILURES) {
        this._schedule();
      } else {
        this._lost(`Lost track of deploy ${id}: ${String((error as Error).message ?? error)}`);
      }
    }
  }

  private _path = '';
  private _id = '';
  private _failures = 0;
  private _timer: number | null = null;
}

/** The dialog after "Deploy…": closing it only stops watching. */
class DeployProgressBody extends Widget {
  constructor(path: string, first: api.IDeployStatus, onGo: (cell: number) => void) {
    super();
    this.addClass('nb2prod-DeployProgress');
    const show = (status: api.IDeployStatus): void => renderDeploy(this.node, status, onGo);
    this._follower = new Follower(show, why => {
      this.node.dataset.state = 'unknown';
      this.node.appendChild(el('p', 'nb2prod-DeployError', why));
    });
    show(first);
    this._follower.follow(path, first);
  }

  dispose(): void {
    this._follower.stop();
    super.dispose();
  }

  private _follower: Follower;
}

export async function showDeployProgress(
  notebook: Notebook,
  path: string,
  first: api.IDeployStatus
): Promise<void> {
  await showWithCells(notebook, 'nb2prod: deploy',
                      onGo => new DeployProgressBody(path, first, onGo));
}

/**
 * The Pipeline panel's "Deploy" section: the notebook's newest deploy, live
 * while it runs.  Hidden while the pipeline has never been deployed from here.
 */
export class DeploySection {
  readonly node: HTMLElement;

  /** `onStates`: called when the followed deploy's stage states change (the panel
   * colours its graph by them while the deploy runs). */
  constructor(private readonly _onGo: (cell: number) => void,
              private readonly _onStates: () => void = () => undefined) {
    this.node = el('section', 'nb2prod-PanelSection nb2prod-DeploySection');
    this.node.hidden = true;
    this._title = el('h3', 'nb2prod-PanelSection-title', 'Deploy');
    this._content = el('div', 'nb2prod-DeploySection-content');
    this.node.append(this._title, this._content);
    this._follower = new Follower(status => this._show(status), why => {
      this._content.appendChild(el('p', 'nb2prod-DeployError', why));
    });
  }

  /** The newest deploy of the notebook at `path` (server path), followed if running. */
  async load(path: string): Promise<void> {
    this._path = path;
    let found: api.IDeployStatus[];
    try {
      found = (await api.deploys(path)).deploys;
    } catch (error) {
      console.warn('nb2prod: listing deploys failed', error);
      return;
    }
    if (path !== this._path) {
      return;
    }
    this._status = found[0] ?? null;
    if (this._status) {
      this._show(this._status);
      this._follower.follow(path, this._status);
    } else {
      this._follower.stop();
      this.node.hidden = true;
    }
  }

  /** Stop polling (panel hidden, another notebook). */
  stop(): void {
    this._follower.stop();
  }

  /** Poll again if the shown deploy was running when polling stopped. */
  resume(): void {
    if (this._status?.state === 'running') {
      void this.load(this._path);
    }
  }

  /** The shown deploy while it runs (its stage states colour the panel's graph). */
  get running(): api.IDeployStatus | null {
    return this._status?.state === 'running' ? this._status : null;
  }

  private _show(status: api.IDeployStatus): void {
    const states = (s: api.IDeployStatus | null): string =>
      s ? `${s.id} ${s.state} ${s.stages.map(x => `${x.name}=${x.state}`).join(' ')}` : '';
    const changed = states(status) !== states(this._status);
    this._status = status;
    this.node.hidden = false;
    this._title.textContent = `Deploy ${status.id}`;
    renderDeploy(this._content, status, this._onGo, true);
    if (status.state === 'running' && !status.following && this._stopping !== status.id) {
      const stop = el('button', 'jp-Button jp-mod-styled jp-mod-warn nb2prod-DeployStop', 'Stop');
      stop.title = 'End the deploy process (nb2prod delete removes what it created)';
      stop.addEventListener('click', () => {
        this._stopping = status.id;
        this._show(status);
        void api.stopDeploy(this._path, status.id).catch(error => {
          this._content.appendChild(el('p', 'nb2prod-DeployError', String(error)));
        });
      });
      this._content.appendChild(stop);
    }
    if (this._stopping === status.id) {
      this._content.appendChild(el(
        'p', 'nb2prod-DeployStopped',
        `${status.state === 'running' ? 'Stopping' : 'Stopped'}: its running Jobs are ` +
        `deleted; the other objects the deploy already created in namespace ` +
        `${status.namespace} stay until \`nb2prod delete\`.`));
    }
    this.node.dataset.state = status.state;
    this.node.dataset.deploy = status.id;
    if (changed) {
      this._onStates();
    }
  }

  private _path = '';
  private _status: api.IDeployStatus | null = null;
  /** the deploy whose Stop was clicked */
  private _stopping: string | null = null;
  private _title: HTMLElement;
  private _content: HTMLElement;
  private _follower: Follower;
}
