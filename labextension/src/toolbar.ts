/**
 * nb2prod's notebook toolbar buttons: an icon with a short label, and a busy
 * state (spinner + "Splitting…") while the server works.
 *
 * Plain Lumino widgets rather than `ToolbarButton` so the label and the busy
 * state can change without re-rendering React, and so they stay narrow: the
 * notebook toolbar moves the items that do not fit into its "…" overflow, last
 * items first, and at 900 px nb2prod's buttons must stay visible (they sit
 * right after the save button and take about 150 px together).
 */
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

/** Scissors: "split the notebook". */
export const splitIcon = new LabIcon({
  name: 'nb2prod:split',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<g class="jp-icon3" fill="#616161"><circle cx="4" cy="4" r="2.2" fill="none" stroke="#616161" stroke-width="1.4"/>' +
    '<circle cx="4" cy="12" r="2.2" fill="none" stroke="#616161" stroke-width="1.4"/>' +
    '<path d="M5.6 5.2 14.5 12.6l-.9 1-8.9-7.4zM5.6 10.8 14.5 3.4l-.9-1-8.9 7.4z"/></g></svg>'
});

/** An arrow out of a box: "deploy to the cluster". */
export const deployIcon = new LabIcon({
  name: 'nb2prod:deploy',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<g class="jp-icon3" fill="#616161"><path d="M8 1 3.5 5.5l1 1L7.3 3.7V11h1.4V3.7l2.8 2.8 1-1z"/>' +
    '<path d="M2 10h1.4v3.6h9.2V10H14v5H2z"/></g></svg>'
});

export interface IButtonOptions {
  className: string;
  label: string;
  tooltip: string;
  icon: LabIcon;
  onClick: () => void;
}

/** A toolbar button: icon + label; `busy` shows a spinner and another label. */
export class NbButton extends Widget {
  constructor(options: IButtonOptions) {
    super();
    this.addClass('jp-ToolbarButton');
    this.addClass('jp-Toolbar-item');
    this.addClass('nb2prod-ToolbarButton');
    this.addClass(options.className);
    this._label = options.label;
    this._button = document.createElement('button');
    this._button.className = 'jp-ToolbarButtonComponent jp-mod-minimal jp-Button nb2prod-ToolbarButton-button';
    this._button.title = options.tooltip;
    this._button.setAttribute('aria-label', options.tooltip);
    this._icon = document.createElement('span');
    this._icon.className = 'jp-ToolbarButtonComponent-icon nb2prod-ToolbarButton-icon';
    options.icon.element({ container: this._icon, elementPosition: 'center' });
    this._spinner = document.createElement('span');
    this._spinner.className = 'nb2prod-Spinner';
    this._spinner.hidden = true;
    this._text = document.createElement('span');
    this._text.className = 'jp-ToolbarButtonComponent-label nb2prod-ToolbarButton-label';
    this._text.textContent = options.label;
    this._button.append(this._icon, this._spinner, this._text);
    this._button.addEventListener('click', () => {
      if (!this._busy) {
        options.onClick();
      }
    });
    this.node.appendChild(this._button);
  }

  /** null: idle; a text ("Splitting…"): working, the button shows a spinner and is inert. */
  set busy(text: string | null) {
    this._busy = text !== null;
    this._spinner.hidden = !this._busy;
    this._icon.hidden = this._busy;
    this._text.textContent = text ?? this._label;
    this._button.setAttribute('aria-busy', String(this._busy));
    this.node.dataset.busy = String(this._busy);
  }

  /** Inert without the spinner (another nb2prod action runs on this notebook). */
  set enabled(value: boolean) {
    this._button.disabled = !value;
  }

  private _busy = false;
  private _label: string;
  private _button: HTMLButtonElement;
  private _icon: HTMLElement;
  private _spinner: HTMLElement;
  private _text: HTMLElement;
}
