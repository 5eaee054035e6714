/**
 * The dialogs of the toolbar buttons: split result, problems and the deploy
 * form (deploy progress: deploy.ts).
 *
 * Built with plain DOM inside Lumino widgets (no React) to keep the bundle
 * small; every element gets an `nb2prod-*` class the browser test and the
 * stylesheet rely on.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Notebook } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { ApiError, IProblem, IKubeContexts, IReport, kubeContexts } from './api';
import { stageColor } from './stages';

/** Select a cell, scroll it into view and flash it so the eye finds it. */
export async function revealCell(notebook: Notebook, index: number): Promise<void> {
  if (index < 0 || index >= notebook.widgets.length) {
    return;
  }
  notebook.deselectAll();
  notebook.mode = 'command';
  notebook.activeCellIndex = index;
  const cell = notebook.widgets[index];
  // JupyterLab 4 renders long notebooks windowed: a far cell has no DOM node
  // until `scrollToItem` brings it in, and the offset it scrolls to is
  // estimated from cell heights not measured yet, so the cell can land off
  // screen once the cells above it render.  Scroll again until it is visible.
  for (let attempt = 0; attempt < 8 && !isInView(notebook, cell); attempt++) {
    try {
      await notebook.scrollToItem(index, 'center');
    } catch {
      // superseded by a newer scroll request (e.g. the activation's own)
    }
    await new Promise(resolve => requestAnimationFrame(() => requestAnimationFrame(resolve)));
  }
  cell.addClass('nb2prod-flash');
  window.setTimeout(() => cell.removeClass('nb2prod-flash'), 1600);
  notebook.activate();
}

/** Whether the cell's node is attached and at least partly inside the notebook's viewport. */
function isInView(notebook: Notebook, cell: Widget): boolean {
  if (!cell.node.isConnected) {
    return false;
  }
  const view = notebook.node.getBoundingClientRect();
  const box = cell.node.getBoundingClientRect();
  return box.height > 0 && box.bottom > view.top + 4 && box.top < view.bottom - 4;
}

/** A DOM element with a class and optional text (the panels and dialogs are plain DOM). */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

/**
 * A list of problems, each with a "Go to cell" button.  `onGo` closes the
 * dialog first so the revealed cell is not hidden behind it.
 */
export function problemList(problems: readonly IProblem[], onGo: (cell: number) => void): HTMLElement {
  const list = el('ul', 'nb2prod-Problems');
  for (const problem of problems) {
    const item = el('li', 'nb2prod-Problem');
    item.appendChild(el('span', 'nb2prod-Problem-text', problem.text ?? problem.message));
    if (problem.cell !== null && problem.cell !== undefined) {
      const cell = problem.cell;
      const button = el('button', 'jp-Button jp-mod-styled jp-mod-reject nb2prod-GoToCell');
      button.textContent = `Go to cell ${cell + 1}`;  // counted from 1, as messages and the status bar count
      button.title = 'Select and scroll to this cell';
      button.addEventListener('click', () => onGo(cell));
      item.appendChild(button);
    }
    list.appendChild(item);
  }
  return list;
}

function joinOr(items: readonly string[], empty: string): string {
  return items.length ? items.join(', ') : empty;
}

/** The stage table shown after split (and check). */
function stageTable(report: IReport): HTMLTableElement {
  const table = el('table', 'nb2prod-Stages');
  const head = table.createTHead().insertRow();
  for (const title of ['Stage', 'Type', 'Inputs (from stage)', 'Outputs', 'Requirements']) {
    head.appendChild(el('th', '', title));
  }
  const body = table.createTBody();
  for (const stage of report.stages) {
    const row = body.insertRow();
    row.className = 'nb2prod-Stage';
    row.dataset.stage = stage.name;
    const name = row.insertCell();
    const badge = el('span', 'nb2prod-Stage-name', stage.name);
    badge.style.setProperty('--nb2prod-stage-color', stageColor(stage.name));
    name.appendChild(badge);
    if (stage.directory) {
      name.appendChild(el('div', 'nb2prod-Stage-dir', `${stage.directory}/`));
    }
    if (stage.after.length) {
      name.appendChild(el('div', 'nb2prod-Stage-after', `after ${stage.after.join(', ')}`));
    }
    row.insertCell().textContent = stage.type;
    const inputs = Object.entries(stage.inputs).map(([n, from]) => `${n} ← ${from}`);
    row.insertCell().textContent = joinOr(inputs, '—');
    row.insertCell().textContent = joinOr(stage.outputs, '—');
    const reqs = row.insertCell();
    reqs.className = 'nb2prod-Stage-reqs';
    reqs.textContent = joinOr(stage.requirements, '—');
  }
  return table;
}

/** Body of the split / check result dialog. */
class ReportBody extends Widget {
  constructor(report: IReport, wrote: boolean, onGo: (cell: number) => void,
              onFolder: (path: string) => void) {
    super();
    this.addClass('nb2prod-Report');
    const where = report.output_relative ?? report.output;
    const summary = el('p', 'nb2prod-Report-summary');
    const n = report.stages.length;
    if (wrote && where) {
      summary.append(`${n} stage${n === 1 ? '' : 's'} written to `);
      if (report.output_relative) {
        // a link that shows the folder in the file browser (inside the server root)
        const folder = report.output_relative;
        const link = el('a', 'nb2prod-Report-output', `${where}/`);
        link.href = '#';
        link.title = 'Show this folder in the file browser';
        link.addEventListener('click', event => {
          event.preventDefault();
          onFolder(folder);
        });
        summary.appendChild(link);
      } else {
        summary.appendChild(el('code', 'nb2prod-Report-output', `${where}/`));
      }
    } else {
      summary.textContent = `${n} stage${n === 1 ? '' : 's'}; the notebook splits cleanly.`;
    }
    this.node.appendChild(summary);
    this.node.appendChild(stageTable(report));
    if (report.dag.length) {
      const dag = report.dag.map(([a, b]) => `${a} → ${b}`).join(',  ');
      this.node.appendChild(el('p', 'nb2prod-Report-dag', `DAG: ${dag}`));
    }
    if (report.warnings.length) {
      this.node.appendChild(el('h3', 'nb2prod-Report-heading', 'Warnings'));
      this.node.appendChild(problemList(report.warnings, onGo));
    }
  }
}

class ProblemsBody extends Widget {
  constructor(problems: readonly IProblem[], onGo: (cell: number) => void) {
    super();
    this.addClass('nb2prod-ProblemsBody');
    this.node.appendChild(problemList(problems, onGo));
  }
}

/**
 * A Close-only dialog whose body has "Go to cell" buttons: a click closes the
 * dialog first, so the revealed cell is not hidden behind it (`close` closes
 * it for the body's other actions).
 */
export async function showWithCells(
  notebook: Notebook,
  title: string,
  body: (onGo: (cell: number) => void, close: () => void) => Widget,
  ...classes: string[]
): Promise<void> {
  let dialog: Dialog<unknown> | null = null;
  const close = (): void => dialog?.reject();
  const onGo = (cell: number): void => {
    close();
    void revealCell(notebook, cell);
  };
  dialog = new Dialog({
    title,
    body: body(onGo, close),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
  for (const name of ['nb2prod-Dialog', ...classes]) {
    dialog.addClass(name);
  }
  await dialog.launch();
}

/**
 * Show a result; "Go to cell" closes the dialog and reveals the cell, the
 * output folder's link closes it and calls `onFolder` with the folder.
 */
export async function showReport(
  notebook: Notebook,
  report: IReport,
  wrote: boolean,
  onFolder: (path: string) => void
): Promise<void> {
  await showWithCells(
    notebook,
    wrote ? 'nb2prod: pipeline written' : 'nb2prod: check passed',
    (onGo, close) => new ReportBody(report, wrote, onGo, path => {
      close();
      onFolder(path);
    })
  );
}

/** Show the server's problems (UserError messages) or any other failure. */
export async function showProblems(
  notebook: Notebook,
  title: string,
  error: unknown
): Promise<void> {
  const problems: IProblem[] =
    error instanceof ApiError
      ? error.problems
      : [{ message: String(error), cell: null, file: null }];
  await showWithCells(notebook, title, onGo => new ProblemsBody(problems, onGo),
                      'nb2prod-ErrorDialog');
}

/** What the deploy form asks for. */
export interface IDeployForm {
  namespace: string;
  /** a kubeconfig context ('' = the current one) */
  context: string;
  image: string;
  /** artifact store URI ('' = nb2prod.ini's) */
  store: string;
  /** `k=v` pairs, one per line or comma-separated (like --param) */
  params: string;
}

/** The form's params text as {name: value}; a string naming the bad entry otherwise. */
export function parseParams(text: string): { [name: string]: string } | string {
  const params: { [name: string]: string } = {};
  for (const raw of text.split(/[\n,]+/)) {
    const item = raw.trim();
    if (!item) {
      continue;
    }
    const eq = item.indexOf('=');
    if (eq <= 0) {
      return `parameter '${item}' must be NAME=VALUE`;
    }
    params[item.slice(0, eq).trim()] = item.slice(eq + 1).trim();
  }
  return params;
}

/** DNS-1123 label: what Kubernetes accepts as a namespace name. */
const NAMESPACE_RE = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export function namespaceError(namespace: string): string | null {
  if (!namespace) {
    return 'A namespace is required.';
  }
  return NAMESPACE_RE.test(namespace)
    ? null
    : `'${namespace}' is not a valid namespace (lowercase letters, digits and '-', at most 63).`;
}

class DeployFormBody extends Widget implements Dialog.IBodyWidget<IDeployForm> {
  constructor(initial: IDeployForm, kube: IKubeContexts) {
    super();
    this.addClass('nb2prod-DeployForm');
    this._namespace = this._field('Namespace', 'namespace', initial.namespace, 'ml', true);
    this._context = el('select', 'jp-mod-styled nb2prod-DeployForm-input');
    this._context.name = 'context';
    const current = el('option', '', kube.current
      ? `current context (${kube.current})` : 'current context / in-cluster account');
    current.value = '';
    this._context.appendChild(current);
    for (const name of kube.contexts) {
      const option = el('option', '', name);
      option.value = name;
      this._context.appendChild(option);
    }
    this._context.value = kube.contexts.includes(initial.context) ? initial.context : '';
    this._row('Kubernetes context (from your kubeconfig)', this._context);
    if (kube.error) {
      this.node.appendChild(el('p', 'nb2prod-DeployForm-note', `kubeconfig: ${kube.error}`));
    }
    this._image = this._field('Image', 'image', initial.image,
      'default from nb2prod.ini (python:3.11-slim)', false);
    this._store = this._field('Artifact store', 'store', initial.store,
      'default from nb2prod.ini, e.g. s3://bucket/prefix or pvc://claim/path', false);
    this._params = el('textarea', 'jp-mod-styled nb2prod-DeployForm-input');
    this._params.name = 'params';
    this._params.rows = 2;
    this._params.value = initial.params;
    this._params.placeholder = 'max_iter=300, test_size=0.3';
    this._row('Parameters (NAME=VALUE, like --param)', this._params);
  }

  getValue(): IDeployForm {
    return {
      namespace: this._namespace.value.trim(),
      context: this._context.value,
      image: this._image.value.trim(),
      store: this._store.value.trim(),
      params: this._params.value.trim()
    };
  }

  protected onAfterAttach(): void {
    this._namespace.focus();
    this._namespace.select();
  }

  private _row(label: string, input: HTMLElement): void {
    const row = el('label', 'nb2prod-DeployForm-row');
    row.appendChild(el('span', 'nb2prod-DeployForm-label', label));
    row.appendChild(input);
    this.node.appendChild(row);
  }

  private _field(
    label: string,
    name: string,
    value: string,
    placeholder: string,
    required: boolean
  ): HTMLInputElement {
    const input = el('input', 'jp-mod-styled nb2prod-DeployForm-input');
    input.name = name;
    input.value = value;
    input.placeholder = placeholder;
    input.required = required;
    input.spellcheck = false;
    this._row(required ? `${label} *` : label, input);
    return input;
  }

  private _namespace: HTMLInputElement;
  private _context: HTMLSelectElement;
  private _image: HTMLInputElement;
  private _store: HTMLInputElement;
  private _params: HTMLTextAreaElement;
}

/** Ask for namespace, context, image, store and parameters; null when cancelled. */
export async function askDeploy(initial: IDeployForm): Promise<IDeployForm | null> {
  let kube: IKubeContexts;
  try {
    kube = await kubeContexts();
  } catch (error) {
    kube = { contexts: [], current: null, error: String((error as Error).message ?? error) };
  }
  const result = await new Dialog<IDeployForm>({
    title: 'nb2prod: deploy to Kubernetes',
    body: new DeployFormBody(initial, kube),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Deploy' })],
    focusNodeSelector: 'input[name="namespace"]'
  }).launch();
  return result.button.accept && result.value ? result.value : null;
}
