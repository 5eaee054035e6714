/**
 * The cell role control: a click on a cell's marker opens a menu that shows
 * the cell's role and sets any tag of DESIGN.md in one click.
 *
 * - a batch or service stage (the notebook's stages listed by name, or a new
 *   one: its name is checked, so no stage is ever named like a role),
 *   "joins the stage above", imports, functions, parameters, skip;
 * - the options of a stage cell: metrics, no-cache, `after:` one of the
 *   stages;
 * - "Resources, image, secrets…" opens the "Cell role…" form for the rest.
 *
 * It acts on the selected cells when the clicked cell is one of them, else on
 * the clicked cell; every change is one undoable transaction that keeps the
 * cell's foreign tags (roles.ts `roleTags`).
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { InputDialog, showErrorMessage } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { NotebookPanel } from '@jupyterlab/notebook';
import { MenuSvg } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';

import { StageMarkers, tagsOf } from './markers';
import {
  IRole,
  Place,
  readRole,
  roleTags,
  stageNameError,
  takesOptions,
  toggledAfter,
  toggledOption,
  withPlace
} from './roles';
import { StageType } from './stages';

export namespace RoleCommands {
  export const place = 'nb2prod:role-place';
  export const option = 'nb2prod:role-option';
  export const after = 'nb2prod:role-after';
  export const newStage = 'nb2prod:role-new-stage';
  /** the menu's first line: which cells it sets (inert) */
  export const heading = 'nb2prod:role-heading';
}

/** The cells a role change applies to, and their notebook. */
interface ITarget {
  panel: NotebookPanel;
  cells: Cell[];
  /** the cell whose marker was clicked: the menu ticks its role */
  clicked?: Cell;
}

/**
 * The selected code cells when `cell` is one of them, else `cell` alone (made
 * the active cell, as a click on it would).
 */
export function targetCells(panel: NotebookPanel, cell: Cell): Cell[] {
  const notebook = panel.content;
  const selected = notebook.widgets.filter(
    c => c.model.type === 'code' && notebook.isSelectedOrActive(c)
  );
  if (selected.includes(cell)) {
    return selected;
  }
  notebook.deselectAll();
  notebook.activeCellIndex = notebook.widgets.indexOf(cell);
  return [cell];
}

/** Write `change(role)` of every target cell as its tags, in one undoable step. */
export function writeRoles(
  target: ITarget,
  change: (role: IRole) => IRole,
  markers: StageMarkers | null
): void {
  target.panel.context.model.sharedModel.transact(() => {
    for (const cell of target.cells) {
      const tags = roleTags(tagsOf(cell), change(readRole(tagsOf(cell))));
      if (tags.length) {
        cell.model.setMetadata('tags', tags);
      } else {
        cell.model.deleteMetadata('tags');
      }
    }
  });
  markers?.update();
}

/** The stages the notebook's markers name, in order, with their type. */
function knownStages(markers: StageMarkers | null): { name: string; type: StageType }[] {
  const found = new Map<string, StageType>();
  for (const m of markers?.markers ?? []) {
    if (m.kind === 'stage' && !found.has(m.name)) {
      found.set(m.name, m.type);
    }
  }
  return [...found].map(([name, type]) => ({ name, type }));
}

const PLACE_LABELS: { [place: string]: string } = {
  join: 'Joins the stage above (no tag)',
  imports: 'imports — copied into every stage',
  functions: 'functions — copied into every stage',
  parameters: 'parameters — every stage, overridable',
  skip: 'skip — in no stage'
};

/**
 * Registers the menu's commands (once) and returns `open(panel, cell, anchor)`,
 * which shows the menu under a marker.  `details` opens the role form.
 */
export function roleMenu(
  app: JupyterFrontEnd,
  markersOf: (panel: NotebookPanel) => StageMarkers | null,
  details: string
): (panel: NotebookPanel, cell: Cell, anchor: HTMLElement) => void {
  const commands = app.commands;
  let target: ITarget | null = null;
  const first = (): IRole | null =>
    target ? readRole(tagsOf(target.clicked ?? target.cells[0])) : null;
  /** An option changes only the cells in a stage (a prelude cell cannot take one). */
  const inStage = (change: (role: IRole) => IRole) => (role: IRole): IRole =>
    takesOptions(role.place) ? change(role) : role;
  const apply = (change: (role: IRole) => IRole): void => {
    if (target) {
      writeRoles(target, change, markersOf(target.panel));
    }
  };
  const stageOnly = (): boolean => {
    const role = first();
    return role !== null && takesOptions(role.place);
  };

  commands.addCommand(RoleCommands.heading, {
    label: args => String(args.text ?? ''),
    isEnabled: () => false,
    execute: () => undefined
  });
  commands.addCommand(RoleCommands.place, {
    label: args => {
      const place = args.place as Place;
      if (place === 'stage' || place === 'serve') {
        return `${place === 'serve' ? 'Service' : 'Batch'} stage: ${args.name as string}`;
      }
      return PLACE_LABELS[place] ?? place;
    },
    isToggled: args => {
      const role = first();
      return role !== null && role.place === args.place &&
        (args.name === undefined || role.name === args.name);
    },
    execute: args => apply(role => withPlace(role, args.place as Place, (args.name as string) ?? ''))
  });
  commands.addCommand(RoleCommands.newStage, {
    label: args => (args.place === 'serve' ? 'New service stage…' : 'New batch stage…'),
    execute: async args => {
      const held = target;
      const place = args.place === 'serve' ? 'serve' : 'stage';
      const name = await askStageName(place);
      if (name !== null && held) {
        target = held;
        apply(role => withPlace(role, place, name));
      }
    }
  });
  commands.addCommand(RoleCommands.option, {
    label: args => (args.option === 'metrics'
      ? 'metrics — record this cell\'s numbers as run metrics'
      : 'no-cache — the stage always runs'),
    isEnabled: stageOnly,
    isToggled: args => {
      const role = first();
      return role !== null && role[args.option as 'metrics' | 'noCache'];
    },
    execute: args => apply(inStage(role => toggledOption(role, args.option as 'metrics' | 'noCache')))
  });
  commands.addCommand(RoleCommands.after, {
    label: args => `after:${args.stage as string}`,
    isEnabled: stageOnly,
    isToggled: args => (first()?.after ?? []).includes(args.stage as string),
    execute: args => apply(inStage(role => toggledAfter(role, args.stage as string)))
  });

  return (panel: NotebookPanel, cell: Cell, anchor: HTMLElement): void => {
    target = { panel, cells: targetCells(panel, cell), clicked: cell };
    const stages = knownStages(markersOf(panel));
    const menu = new MenuSvg({ commands });
    menu.addClass('nb2prod-RoleMenu');
    const n = target.cells.length;
    menu.title.label = n === 1 ? 'Role of this cell' : `Role of ${n} selected cells`;
    menu.addItem({ command: RoleCommands.heading, args: { text: menu.title.label } });
    menu.addItem({ type: 'separator' });
    for (const { name, type } of stages) {
      menu.addItem({ command: RoleCommands.place,
                     args: { place: type === 'service' ? 'serve' : 'stage', name } });
    }
    menu.addItem({ command: RoleCommands.newStage, args: { place: 'stage' } });
    menu.addItem({ command: RoleCommands.newStage, args: { place: 'serve' } });
    menu.addItem({ type: 'separator' });
    for (const place of ['join', 'imports', 'functions', 'parameters', 'skip']) {
      menu.addItem({ command: RoleCommands.place, args: { place } });
    }
    menu.addItem({ type: 'separator' });
    menu.addItem({ command: RoleCommands.option, args: { option: 'metrics' } });
    menu.addItem({ command: RoleCommands.option, args: { option: 'noCache' } });
    const own = readRole(tagsOf(cell)).name;
    const others = stages.filter(s => s.name !== own);
    const after = new MenuSvg({ commands });
    if (others.length) {
      after.addClass('nb2prod-RoleMenu');
      after.title.label = 'Runs after (after:)';
      for (const { name } of others) {
        after.addItem({ command: RoleCommands.after, args: { stage: name } });
      }
      menu.addItem({ type: 'submenu', submenu: after });
    }
    menu.addItem({ type: 'separator' });
    menu.addItem({ command: details, args: { menu: true } });
    menu.aboutToClose.connect(() => {
      // after the command ran (Lumino runs it after closing): dispose later
      requestAnimationFrame(() => {
        menu.dispose();
        after.dispose();
      });
    });
    const box = anchor.getBoundingClientRect();
    menu.open(box.left, box.bottom + 2);
    refreshCommands(commands);
  };
}

function refreshCommands(commands: CommandRegistry): void {
  for (const id of Object.values(RoleCommands)) {
    commands.notifyCommandChanged(id);
  }
}

/** Ask for a new stage's name until it is valid (never a role's name); null: cancelled. */
async function askStageName(place: 'stage' | 'serve'): Promise<string | null> {
  let text = '';
  for (;;) {
    const result = await InputDialog.getText({
      title: place === 'serve' ? 'nb2prod: new service stage' : 'nb2prod: new batch stage',
      label: 'Stage name (lowercase letters, digits, - and _)',
      placeholder: place === 'serve' ? 'api' : 'prepare',
      text
    });
    if (!result.button.accept || result.value === null) {
      return null;
    }
    text = result.value.trim();
    const error = stageNameError(text);
    if (error === null) {
      return text;
    }
    await showErrorMessage('nb2prod: stage name', error);
  }
}
