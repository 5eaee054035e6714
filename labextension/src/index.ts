/**
 * nb2prod for JupyterLab.
 *
 * - notebook toolbar buttons "Split to pipeline" and "Deploy…" calling the
 *   nb2prod jupyter_server extension;
 * - a stage marker on every code cell, recomputed as tags change; a click on
 *   it opens the cell's role menu (rolemenu.ts);
 * - "nb2prod: Cell role…" (palette, cell context menu, the role menu): the
 *   form for every tag of DESIGN.md;
 * - the Pipeline panel in the right sidebar (panel.ts).
 *
 * All the splitting logic stays in Python: the frontend only saves the
 * notebook, sends its path and shows what the server answers, so the CLI and
 * the UI can never disagree about a pipeline.
 */
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, showErrorMessage } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { DocumentRegistry } from '@jupyterlab/docregistry';
import {
  INotebookModel,
  INotebookTracker,
  NotebookPanel
} from '@jupyterlab/notebook';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { DisposableDelegate, IDisposable } from '@lumino/disposable';

import * as api from './api';
import {
  askDeploy,
  IDeployForm,
  namespaceError,
  parseParams,
  showProblems,
  showReport
} from './dialogs';
import { showDeployProgress } from './deploy';
import { LiveRoles } from './liveroles';
import { StageMarkers, tagsOf } from './markers';
import { PipelinePanel } from './panel';
import { askRole } from './roleform';
import { roleMenu, writeRoles } from './rolemenu';
import { readRole } from './roles';
import { isRunFile, RunFilesDrive, runFilePath } from './rundrive';
import { stageNames } from './stages';
import { deployIcon, NbButton, splitIcon } from './toolbar';

const PLUGIN_ID = 'nb2prod:plugin';

export namespace CommandIDs {
  export const split = 'nb2prod:split';
  export const deploy = 'nb2prod:deploy';
  export const check = 'nb2prod:check';
  export const setStage = 'nb2prod:set-stage';
  export const showPanel = 'nb2prod:show-pipeline';
  export const runLocally = 'nb2prod:run-locally';
}

/** The Pipeline panel's tab icon: three stages joined in a DAG. */
const pipelineIcon = new LabIcon({
  name: 'nb2prod:pipeline',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<g class="jp-icon3" fill="#616161"><rect x="5" y="1" width="6" height="4" rx="1"/>' +
    '<rect x="1" y="11" width="6" height="4" rx="1"/><rect x="9" y="11" width="6" height="4" rx="1"/>' +
    '<path d="M7.5 5h1v3h3.5v3h-1V9H5v2H4V8h3.5z"/></g></svg>'
});

/** The server path of a notebook: drive prefixes (e.g. "RTC:") stripped. */
function serverPath(app: JupyterFrontEnd, panel: NotebookPanel): string {
  return app.serviceManager.contents.localPath(panel.context.path);
}

/**
 * Save first: the server splits the file on disk, so unsaved edits (tags
 * just typed, cells just added) would otherwise be silently ignored.
 */
async function saved(panel: NotebookPanel): Promise<boolean> {
  if (panel.context.model.dirty) {
    try {
      await panel.context.save();
    } catch (error) {
      await showErrorMessage('nb2prod: could not save the notebook', error as Error);
      return false;
    }
  }
  return true;
}

/** The Pipeline panel: checked again after every split or check from the toolbar. */
let pipelinePanel: PipelinePanel | null = null;

/** Guards against double clicks while a request is in flight. */
const busy = new WeakSet<NotebookPanel>();

/** The nb2prod toolbar buttons of each notebook panel (they show the busy state). */
const buttons = new WeakMap<NotebookPanel, { split: NbButton; deploy: NbButton }>();

/** Mark `panel` busy with `text` ("Splitting…") on its buttons, or idle (null). */
function setBusy(panel: NotebookPanel, text: string | null): void {
  if (text === null) {
    busy.delete(panel);
  } else {
    busy.add(panel);
  }
  panel.node.classList.toggle('nb2prod-busy', text !== null);
  const own = buttons.get(panel);
  if (own) {
    own.split.busy = text;
    own.deploy.enabled = text === null;
  }
}

/**
 * Show a folder in JupyterLab's file browser (the split result's output link),
 * reloading its listing first so a folder split just wrote is there.
 */
async function showFolder(app: JupyterFrontEnd, path: string): Promise<void> {
  await app.commands.execute('filebrowser:activate', { path });
  await app.commands.execute('filebrowser:go-to-path', { path });
}

/** Reload the file browser's listing: a split writes a folder it would show only later.
 * Awaited before the split's result shows, so the folder is listed when the user reads it. */
async function refreshFileBrowser(app: JupyterFrontEnd): Promise<void> {
  if (app.commands.hasCommand('filebrowser:refresh')) {
    await app.commands.execute('filebrowser:refresh').catch(reason =>
      console.warn('nb2prod: file browser not refreshed', reason));
  }
}

async function runSplit(app: JupyterFrontEnd, panel: NotebookPanel, write: boolean): Promise<void> {
  if (busy.has(panel) || !(await saved(panel))) {
    return;
  }
  setBusy(panel, write ? 'Splitting…' : 'Checking…');
  try {
    const path = serverPath(app, panel);
    const report = write ? await api.split(path) : await api.check(path);
    setBusy(panel, null);
    if (write) {
      await refreshFileBrowser(app);
    }
    void refreshPanel(panel);
    await showReport(panel.content, report, write, folder => void showFolder(app, folder));
  } catch (error) {
    setBusy(panel, null);
    const title = write ? 'nb2prod: cannot split this notebook' : 'nb2prod: check found problems';
    void refreshPanel(panel);
    await showProblems(panel.content, title, error);
  }
}

/** Refresh the Pipeline panel when it shows `panel` (its problems, DAG and runs). */
async function refreshPanel(panel: NotebookPanel): Promise<void> {
  if (pipelinePanel && pipelinePanel.notebook === panel) {
    await pipelinePanel.refresh();
  }
}

/** The last answers of the deploy form, so a redeploy is two clicks. */
let lastDeploy: IDeployForm = { namespace: '', context: '', image: '', store: '', params: '' };

async function runDeploy(app: JupyterFrontEnd, panel: NotebookPanel): Promise<void> {
  if (busy.has(panel)) {
    return;
  }
  let form = await askDeploy(lastDeploy);
  const formError = (f: IDeployForm): string | null => {
    const params = parseParams(f.params);
    return namespaceError(f.namespace) ?? (typeof params === 'string' ? params : null);
  };
  while (form !== null && formError(form) !== null) {
    await showErrorMessage('nb2prod: deploy', formError(form) ?? '');
    form = await askDeploy(form);
  }
  if (form === null || !(await saved(panel))) {
    return;
  }
  lastDeploy = form;
  setBusy(panel, 'Deploying…');
  const path = serverPath(app, panel);
  let first: api.IDeployStatus;
  try {
    first = await api.deploy({
      path,
      namespace: form.namespace,
      ...(form.context ? { context: form.context } : {}),
      ...(form.image ? { image: form.image } : {}),
      ...(form.store ? { store: form.store } : {}),
      params: parseParams(form.params) as { [name: string]: string }
    });
  } catch (error) {
    await showProblems(panel.content, 'nb2prod: cannot deploy', error);
    return;
  } finally {
    setBusy(panel, null);
  }
  void refreshPanel(panel); // the panel's Deploy section follows it too
  await showDeployProgress(panel.content, path, first);
}

/** The toolbar item nb2prod's buttons follow. */
const TOOLBAR_ANCHOR = 'save';

/** Adds the toolbar buttons and the stage markers to every notebook panel. */
class NotebookExtension implements DocumentRegistry.IWidgetExtension<NotebookPanel, INotebookModel> {
  constructor(
    private readonly _app: JupyterFrontEnd,
    private readonly _markers: Map<NotebookPanel, StageMarkers>,
    private readonly _settings: { showStageMarkers: boolean },
    private readonly _openRoleMenu: (panel: NotebookPanel, cell: Cell, anchor: HTMLElement) => void
  ) {}

  createNew(panel: NotebookPanel): IDisposable {
    if (isRunFile(panel.context.path)) {
      return new DisposableDelegate(() => undefined); // a run's record: nothing to split or tag
    }
    const split = new NbButton({
      className: 'nb2prod-SplitButton',
      label: 'Split',
      icon: splitIcon,
      tooltip: 'Save, then split this notebook into a pipeline directory (nb2prod split)',
      onClick: () => void runSplit(this._app, panel, true)
    });
    const deploy = new NbButton({
      className: 'nb2prod-DeployButton',
      label: 'Deploy…',
      icon: deployIcon,
      tooltip: 'Split, then deploy the pipeline to Kubernetes (nb2prod deploy)',
      onClick: () => void runDeploy(this._app, panel)
    });
    buttons.set(panel, { split, deploy });
    // Right after the save button: the toolbar moves items that do not fit
    // into its overflow last ones first, and these are what a user of nb2prod
    // clicks most (see toolbar.ts).
    if (!panel.toolbar.insertAfter(TOOLBAR_ANCHOR, 'nb2prod-split', split)) {
      panel.toolbar.insertItem(0, 'nb2prod-split', split);
    }
    panel.toolbar.insertAfter('nb2prod-split', 'nb2prod-deploy', deploy);
    const markers = new StageMarkers(panel, (cell, node) => this._openRoleMenu(panel, cell, node));
    markers.enabled = this._settings.showStageMarkers;
    this._markers.set(panel, markers);
    const live = new LiveRoles(panel, markers, () => serverPath(this._app, panel));
    return new DisposableDelegate(() => {
      split.dispose();
      deploy.dispose();
      live.dispose();
      markers.dispose();
      this._markers.delete(panel);
    });
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'Split a tagged notebook into a pipeline and deploy it to Kubernetes.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ): void => {
    const markers = new Map<NotebookPanel, StageMarkers>();
    const settings = { showStageMarkers: true };
    const openRoleMenu = roleMenu(app, panel => markers.get(panel) ?? null, CommandIDs.setStage);
    app.docRegistry.addWidgetExtension(
      'Notebook',
      new NotebookExtension(app, markers, settings, openRoleMenu)
    );

    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = (): void => {
            settings.showStageMarkers = loaded.get('showStageMarkers').composite !== false;
            markers.forEach(m => (m.enabled = settings.showStageMarkers));
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason => console.warn('nb2prod: settings not loaded', reason));
    }

    // a run's executed notebook opens from a read-only drive (rundrive.ts)
    app.serviceManager.contents.addDrive(new RunFilesDrive());
    const openRunNotebook = async (path: string): Promise<void> => {
      try {
        // no kernel: it is a record to read (the user may still pick one)
        const widget = await app.commands.execute('docmanager:open', {
          path: runFilePath(path), factory: 'Notebook',
          kernelPreference: { shouldStart: false, canStart: true, shutdownOnDispose: true }
        });
        // JupyterLab upgrades an older notebook's format on load (cell ids),
        // which marks it changed; a run's record has nothing to save.
        await widget?.context?.ready;
        if (widget?.context?.model) {
          widget.context.model.dirty = false;
        }
      } catch (reason) {
        await showErrorMessage('nb2prod: cannot open the notebook', reason as Error);
      }
    };
    const pipeline = new PipelinePanel(markers, panel => serverPath(app, panel),
                                       path => void openRunNotebook(path));
    pipelinePanel = pipeline;
    pipeline.title.icon = pipelineIcon;
    app.shell.add(pipeline, 'right', { rank: 650 });
    pipeline.notebook = tracker.currentWidget && !isRunFile(tracker.currentWidget.context.path)
      ? tracker.currentWidget : null;
    tracker.currentChanged.connect((_, panel) => {
      if (!panel || !isRunFile(panel.context.path)) {
        pipeline.notebook = panel; // a run's notebook is shown beside its pipeline's
      }
    });

    const current = (): NotebookPanel | null => tracker.currentWidget;
    const hasNotebook = (): boolean => current() !== null;

    app.commands.addCommand(CommandIDs.split, {
      label: 'nb2prod: Split notebook to pipeline',
      isEnabled: hasNotebook,
      execute: async () => {
        const panel = current();
        if (panel) {
          await runSplit(app, panel, true);
        }
      }
    });
    app.commands.addCommand(CommandIDs.check, {
      label: 'nb2prod: Check notebook',
      isEnabled: hasNotebook,
      execute: async () => {
        const panel = current();
        if (panel) {
          await runSplit(app, panel, false);
        }
      }
    });
    app.commands.addCommand(CommandIDs.deploy, {
      label: 'nb2prod: Deploy notebook to Kubernetes…',
      isEnabled: hasNotebook,
      execute: async () => {
        const panel = current();
        if (panel) {
          await runDeploy(app, panel);
        }
      }
    });
    app.commands.addCommand(CommandIDs.setStage, {
      label: args => (args.menu ? 'after:, resources, image, secrets… (the role form)'
        : 'nb2prod: Cell role…'),
      caption: 'Set the role of the selected cells: stage, service, imports, functions, ' +
        'parameters, skip, metrics, after:, resource hints',
      isEnabled: hasNotebook,
      execute: async () => {
        const panel = current();
        if (panel) {
          await setRole(panel, markers.get(panel) ?? null);
        }
      }
    });

    app.commands.addCommand(CommandIDs.showPanel, {
      label: 'nb2prod: Show pipeline panel',
      execute: () => {
        app.shell.activateById(pipeline.id);
      }
    });
    app.commands.addCommand(CommandIDs.runLocally, {
      label: 'nb2prod: Run pipeline locally',
      caption: 'Save, split and run the batch stages on the server (nb2prod run --no-serve)',
      isEnabled: hasNotebook,
      execute: async () => {
        app.shell.activateById(pipeline.id);
        await pipeline.runLocally();
      }
    });

    if (palette) {
      for (const command of Object.values(CommandIDs)) {
        palette.addItem({ command, category: 'nb2prod' });
      }
    }
    app.contextMenu.addItem({
      command: CommandIDs.setStage,
      selector: '.jp-Notebook .jp-Cell',
      rank: 30
    });
  }
};

/**
 * The "Cell role…" form for the selected code cells, pre-filled from the
 * active cell; saving replaces our tags on every selected cell (foreign tags
 * such as `hide-input` stay) in one undoable transaction.
 */
async function setRole(panel: NotebookPanel, markers: StageMarkers | null): Promise<void> {
  const notebook = panel.content;
  const cells = notebook.widgets.filter(
    cell => cell.model.type === 'code' && notebook.isSelectedOrActive(cell)
  );
  if (!cells.length) {
    await showErrorMessage('nb2prod', 'Select one or more code cells first.');
    return;
  }
  const active = notebook.activeCell && cells.includes(notebook.activeCell)
    ? notebook.activeCell : cells[0];
  const known = markers ? stageNames(markers.markers) : [];
  const role = await askRole(readRole(tagsOf(active)), known, cells.length);
  if (role === null) {
    return;
  }
  writeRoles({ panel, cells }, () => role, markers);
}

export default plugin;
