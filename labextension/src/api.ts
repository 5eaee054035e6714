/**
 * Calls to the nb2prod jupyter_server extension (`nb2prod/jupyter/handlers.py`).
 *
 * Requests go through `ServerConnection.makeRequest` so they carry the
 * server's token and XSRF cookie like every other JupyterLab API call.
 * Errors come back as `{problems: [...]}` with the CLI's messages; they are
 * thrown as `ApiError` so callers can show them next to the cells.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** One user-facing problem, as `nb2prod.errors.Problem.to_dict()` sends it. */
export interface IProblem {
  message: string;
  /** 0-based index into the notebook's cells (all cell types) */
  cell: number | null;
  file: string | null;
  /** the CLI's one-line rendering, "file, cell N: message" */
  text?: string;
}

export interface IStage {
  name: string;
  type: 'batch' | 'service';
  directory: string;
  cells: number[];
  inputs: { [name: string]: string };
  outputs: string[];
  requirements: string[];
  after: string[];
  metrics?: string[];
}

/** `Report.to_dict()` of nb2prod.split, plus `output_relative` from the handler. */
export interface IReport {
  notebook: string;
  output: string | null;
  output_relative?: string | null;
  stages: IStage[];
  dag: [string, string][];
  warnings: IProblem[];
}

export type StageState =
  'waiting' | 'running' | 'done' | 'failed' | 'skipped' | 'cached' | 'serving' | 'stopped';

/** Who stopped a run or deploy with the panel's Stop, and when (`runners.interrupts`). */
export interface IStopNote {
  by: string;
  via: string;
  /** seconds since the epoch */
  at: number;
}

export interface IStageStatus {
  name: string;
  type?: string;
  state: StageState;
  message: string;
  elapsed: number;
  /** a failed stage's cell (0-based) when its message names one */
  cell?: number | null;
}

/** A service a deploy rolled out (`result.services` of `nb2prod deploy`). */
export interface IDeployedService {
  status: string;
  url: string | null;
  proxy_url: string | null;
  port_forward: string | null;
  model_run_id: string | null;
  message: string | null;
}

/** GET /nb2prod/deploy/<id>?path=…: a detached `nb2prod deploy`, read from its record. */
export interface IDeployStatus {
  id: string;
  state: 'running' | 'done' | 'failed' | 'stopped';
  namespace: string;
  context: string | null;
  pipeline: string;
  run_id: string | null;
  stages: IStageStatus[];
  problems: IProblem[];
  error: string | null;
  elapsed: number;
  services: { [name: string]: IDeployedService };
  exit_code: number | null;
  output: string;
  /** its console output, relative to the server root: open with `fileUrl` */
  log: string | null;
  /** stopped with the panel's Stop: by whom, when */
  stopped?: IStopNote | null;
  /** its process is gone but its Jobs still run: why the cluster is followed instead */
  following?: string | null;
}

export interface IDeployRequest {
  path: string;
  namespace: string;
  context?: string;
  image?: string;
  store?: string;
  params?: { [name: string]: string };
}

/** GET /nb2prod/kube: the kubeconfig's contexts */
export interface IKubeContexts {
  contexts: string[];
  current: string | null;
  error: string | null;
}

export function kubeContexts(): Promise<IKubeContexts> {
  return request<IKubeContexts>('kube', { method: 'GET' });
}

/** A non-2xx answer from the server, with its problems when it sent some. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly problems: IProblem[]
  ) {
    super(problems.map(p => p.text ?? p.message).join('\n') || `HTTP ${status}`);
  }
}

async function request<T>(endpoint: string, init: RequestInit): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nb2prod', endpoint);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new ApiError(0, [
      { message: `cannot reach the server: ${String(error)}`, cell: null, file: null }
    ]);
  }
  const text = await response.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    throw new ApiError(response.status, problemsOf(data, response));
  }
  return data as T;
}

function problemsOf(data: unknown, response: Response): IProblem[] {
  if (data !== null && typeof data === 'object') {
    const body = data as { problems?: IProblem[]; message?: string };
    if (Array.isArray(body.problems) && body.problems.length) {
      return body.problems;
    }
    if (typeof body.message === 'string' && body.message) {
      return [{ message: body.message, cell: null, file: null }];
    }
  }
  const reason = response.statusText || 'request failed';
  return [{ message: `${response.status} ${reason}`, cell: null, file: null }];
}

function post<T>(endpoint: string, body: object): Promise<T> {
  return request<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}

/** Analyse the notebook on the server; writes nothing. */
export function check(path: string): Promise<IReport> {
  return post<IReport>('check', { path });
}

/**
 * Split the notebook.  The toolbar always updates an existing pipeline
 * (`force`): clicking the button again after editing the notebook is the
 * normal workflow, and split keeps config.ini edits and backs up edited
 * generated files, so nothing of the user's is lost.
 */
export function split(path: string): Promise<IReport> {
  return post<IReport>('split', { path, force: true });
}

/** Split (updating) and start a deploy; the answer is the first status. */
export function deploy(req: IDeployRequest): Promise<IDeployStatus> {
  return post<IDeployStatus>('deploy', { ...req, force: true });
}

/** One deploy of the notebook (or pipeline dir) at `path`. */
export function deployStatus(path: string, id: string): Promise<IDeployStatus> {
  return query(`deploy/${encodeURIComponent(id)}`, { path });
}

/** End a running deploy's process (what it created in the cluster stays). */
export function stopDeploy(path: string, id: string): Promise<unknown> {
  return post(`deploy/${encodeURIComponent(id)}/stop`, { path });
}

/** The deploys of the notebook (or pipeline dir) at `path`, newest first. */
export function deploys(path: string): Promise<{ deploys: IDeployStatus[] }> {
  return query('deploy', { path });
}

// -- the Pipeline panel -------------------------------------------------------------
/** A problem with `position` = cell + 1 (what the status bar and messages show). */
export interface IPanelProblem extends IProblem {
  position?: number | null;
}

export interface IPanelStage extends IStage {
  positions: number[];
  files: string[];
  file_inputs: { [path: string]: string };
  resources: { [key: string]: string };
  secrets: string[];
}

/** One node of `nb2prod.graph.Graph` (the model `nb2prod graph` draws). */
export interface IGraphNode {
  name: string;
  kind: 'batch' | 'service';
  state: string | null;
  seconds: number | null;
  cached_from: string | null;
  metrics: { [name: string]: number };
  message: string;
}

export interface IGraphEdge {
  source: string;
  target: string;
  names: string[];
  files: string[];
}

export interface IGraph {
  pipeline: string;
  nodes: IGraphNode[];
  edges: IGraphEdge[];
  run_id: string | null;
  run_status: string | null;
}

export interface IInferredRole {
  cell: number;
  id: string | null;
  position: number;
  role: 'parameters' | 'imports' | 'functions';
  /** "every stage" or "where used" */
  scope: string;
  why: string;
}

/** POST /nb2prod/roles: the roles of untagged cells in unsaved notebook content. */
export interface IContentRoles {
  inferred_roles: IInferredRole[];
  problems: IProblem[];
}

/** Analyse `content` (the notebook's JSON as the browser holds it) as the notebook at
 * `path`; nothing is saved or written on the server. */
export function contentRoles(path: string, content: object): Promise<IContentRoles> {
  return post<IContentRoles>('roles', { path, content });
}

/** GET /nb2prod/pipeline */
export interface IPipelineInfo {
  notebook: string;
  pipeline_dir: string | null;
  split: boolean;
  stages: IPanelStage[];
  dag: [string, string][];
  problems: IPanelProblem[];
  warnings: IPanelProblem[];
  no_stage: { cell: number; position: number; why: string }[];
  /** untagged cells the analysis gives a role (their markers show it) */
  inferred_roles: IInferredRole[];
  graph: IGraph | null;
  /** each service stage's port without --port (its config.ini PORT) */
  service_ports: { [stage: string]: number };
}

export interface IRunStage {
  status?: string;
  seconds?: number;
  cached_from?: string;
  message?: string;
  reason?: string;
  /** paths relative to the server root: open with `fileUrl` */
  files: { html?: string; notebook?: string; log?: string };
}

export interface IRun {
  run_id: string;
  status: string;
  started: number | null;
  finished: number | null;
  seconds: number | null;
  metrics: { [stage: string]: { [name: string]: number } };
  promoted: boolean | null;
  reason: string;
  latest: boolean;
  /** "not promoted: WHY" for a run the promotion gate held back, as `nb2prod runs` says */
  verdict: string;
  stages: { [name: string]: IRunStage };
}

/** A service a serving run ("Run and serve") keeps up, from its console output. */
export interface IServing {
  name: string;
  run_id: string;
  url: string;
  /** a sample request, as `nb2prod run` prints it */
  curl: string;
}

export interface ILaunch {
  id: string;
  state: 'running' | 'exited';
  exit_code: number | null;
  run_id: string | null;
  /** started with serving ("Run and serve") */
  serve: boolean;
  /** while serving: its services */
  services: IServing[];
  output: string;
  log: string | null;
  started: number | null;
  /** Stop was pressed: by whom, when */
  stopped?: IStopNote | null;
}

/** GET /nb2prod/runs */
export interface IRuns {
  pipeline: string | null;
  runs: IRun[];
  launches: ILaunch[];
  graph: IGraph | null;
}

function query(endpoint: string, params: { [key: string]: string }): Promise<any> {
  const search = new URLSearchParams(params).toString();
  return request(`${endpoint}?${search}`, { method: 'GET' });
}

export function pipelineInfo(path: string): Promise<IPipelineInfo> {
  return query('pipeline', { path });
}

export function runs(path: string, run?: string): Promise<IRuns> {
  return query('runs', run ? { path, run } : { path });
}

/** `port`: the panel's Port field as typed ('' : each service's config.ini PORT); the
 * server validates it. */
export function startRun(path: string, serve = false,
                         port = ''): Promise<{ launch: ILaunch }> {
  return post('run', port.trim() ? { path, serve, port: port.trim() } : { path, serve });
}

export function stopRun(path: string, launch: string): Promise<unknown> {
  return post(`run/${encodeURIComponent(launch)}/stop`, { path });
}

/** The URL that serves a run's report, notebook or log (GET /nb2prod/file). */
export function fileUrl(path: string): string {
  const settings = ServerConnection.makeSettings();
  return URLExt.join(settings.baseUrl, 'nb2prod', 'file') +
    '?' + new URLSearchParams({ path }).toString();
}
