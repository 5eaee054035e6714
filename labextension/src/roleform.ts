/**
 * "Cell role…": a form for every tag of DESIGN.md on the selected cells.
 *
 * Place (batch stage / service stage with a name, join the stage above,
 * imports, functions, parameters, skip) plus metrics, no-cache, `after:`
 * edges, resource hints and secrets.  The rules (what is valid, which tags
 * are written) are the pure functions of roles.ts.
 */
import { Dialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { el } from './dialogs';
import { HINT_KEYS, IRole, Place, PLACES, roleErrors } from './roles';


const list = (text: string): string[] => text.split(/[\s,]+/).map(s => s.trim()).filter(Boolean);

class RoleFormBody extends Widget implements Dialog.IBodyWidget<IRole> {
  constructor(initial: IRole, stages: readonly string[]) {
    super();
    this.addClass('nb2prod-RoleForm');
    const datalist = el('datalist', '');
    datalist.id = `nb2prod-stage-names-${Math.random().toString(36).slice(2)}`;
    for (const name of stages) {
      const option = el('option', '');
      option.value = name;
      datalist.appendChild(option);
    }
    this.node.appendChild(datalist);
    this._place = el('select', 'jp-mod-styled nb2prod-RoleForm-place');
    this._place.name = 'place';
    for (const { place, label } of PLACES) {
      const option = el('option', '', label);
      option.value = place;
      this._place.appendChild(option);
    }
    this._place.value = initial.place;
    this._row('This cell', this._place);
    this._name = this._input('name', initial.name, 'train');
    this._name.setAttribute('list', datalist.id);
    this._nameRow = this._row('Stage name', this._name);
    this._metrics = this._check('metrics', initial.metrics,
      'metrics: record the numbers this cell references as run metrics');
    this._noCache = this._check('nocache', initial.noCache,
      'no-cache: the stage always runs (it reads live data)');
    this._after = this._input('after', initial.after.join(', '), 'prepare, features');
    this._after.setAttribute('list', datalist.id);
    this._row('after: (runs after these stages)', this._after);
    for (const key of HINT_KEYS) {
      const placeholder = { cpu: '0.5', memory: '500Mi', gpu: '1', image: 'registry/image:tag' }[key] ?? '';
      this._hints[key] = this._input(key, initial.hints[key] ?? '', placeholder);
      this._row(`${key}:`, this._hints[key]);
    }
    this._secrets = this._input('secrets', initial.secrets.join(', '), 's3-credentials:key:AWS_ACCESS_KEY_ID');
    this._row('secret: (NAME:KEY:ENV)', this._secrets);
    this._errors = el('ul', 'nb2prod-RoleForm-errors');
    this.node.appendChild(this._errors);
    this._place.addEventListener('change', () => this._sync());
    this.node.addEventListener('input', () => this._showErrors());
    this._sync();
  }

  getValue(): IRole {
    const hints: { [key: string]: string } = {};
    for (const key of HINT_KEYS) {
      if (this._hints[key].value.trim()) {
        hints[key] = this._hints[key].value.trim();
      }
    }
    return {
      place: this._place.value as Place,
      name: this._name.value.trim(),
      metrics: this._metrics.checked,
      noCache: this._noCache.checked,
      after: list(this._after.value),
      hints,
      secrets: list(this._secrets.value)
    };
  }

  private _sync(): void {
    const named = this._place.value === 'stage' || this._place.value === 'serve';
    this._nameRow.hidden = !named;
    if (named && !this._name.value) {
      this._name.value = this._place.value === 'serve' ? 'serve' : '';
    }
    this._showErrors();
  }

  private _showErrors(): void {
    this._errors.replaceChildren(...roleErrors(this.getValue()).map(e => el('li', 'nb2prod-RoleForm-error', e)));
  }

  private _row(label: string, input: HTMLElement): HTMLElement {
    const row = el('label', 'nb2prod-DeployForm-row');
    row.appendChild(el('span', 'nb2prod-DeployForm-label', label));
    row.appendChild(input);
    this.node.appendChild(row);
    return row;
  }

  private _input(name: string, value: string, placeholder: string): HTMLInputElement {
    const input = el('input', 'jp-mod-styled nb2prod-DeployForm-input');
    input.name = name;
    input.value = value;
    input.placeholder = placeholder;
    input.spellcheck = false;
    return input;
  }

  private _check(name: string, checked: boolean, label: string): HTMLInputElement {
    const row = el('label', 'nb2prod-RoleForm-check');
    const input = el('input', '');
    input.type = 'checkbox';
    input.name = name;
    input.checked = checked;
    row.append(input, document.createTextNode(` ${label}`));
    this.node.appendChild(row);
    return input;
  }

  private _place: HTMLSelectElement;
  private _name: HTMLInputElement;
  private _nameRow: HTMLElement;
  private _metrics: HTMLInputElement;
  private _noCache: HTMLInputElement;
  private _after: HTMLInputElement;
  private _hints: { [key: string]: HTMLInputElement } = {};
  private _secrets: HTMLInputElement;
  private _errors: HTMLElement;
}

/** Ask for the role of `count` cells; null when cancelled. Invalid answers are asked again. */
export async function askRole(initial: IRole, stages: readonly string[], count: number): Promise<IRole | null> {
  let value = initial;
  for (;;) {
    const result = await new Dialog<IRole>({
      title: `nb2prod: role of ${count} selected cell${count === 1 ? '' : 's'}`,
      body: new RoleFormBody(value, stages),
      buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Set role' })],
      focusNodeSelector: 'select[name="place"]'
    }).launch();
    if (!result.button.accept || !result.value) {
      return null;
    }
    value = result.value;
    if (!roleErrors(value).length) {
      return value;
    }
  }
}
