/**
 * Which stage each cell belongs to, computed from cell tags in the browser.
 *
 * This mirrors `nb2prod/tags.py` and the cell assignment in
 * `nb2prod/analysis.py` (DESIGN.md "Cell tags") so the markers update as the
 * user types tags, without a server round trip.  It only answers "where does
 * this cell go"; data flow and every other check stay on the server (split /
 * check), which is the single source of truth for errors.
 */

/** Stage names: lowercase letters, digits, '-' and '_', at most 40 chars. */
export const NAME_RE = /^[a-z0-9][a-z0-9_-]{0,39}$/;

/** Role tags (papermill's and Kale's spellings) → nb2prod role. */
const ROLE_TAGS: { [tag: string]: Role } = {
  parameters: 'parameters',
  'pipeline-parameters': 'parameters',
  imports: 'imports',
  functions: 'functions',
  skip: 'skip'
};

/** Tag prefixes that start a batch stage (`step:`/`block:` are Kale's). */
const BATCH_PREFIXES = ['stage', 'step', 'block'];

/** Tags that only make sense on a cell inside a stage (DAG edges, hints, metrics). */
const STAGE_ONLY_PREFIXES = ['after', 'prev', 'cpu', 'memory', 'gpu', 'image', 'secret', 'limit'];
const METRICS_TAGS = ['metrics', 'pipeline-metrics'];

export type Role = 'parameters' | 'imports' | 'functions' | 'skip';
export type StageType = 'batch' | 'service';

/** What the marker on one code cell shows. */
export type CellMarker =
  | {
      kind: 'stage';
      name: string;
      type: StageType;
      /** true when this cell's own tag names the stage, false when it joins the stage above */
      start: boolean;
      /** tagged `metrics`: its numbers are recorded as the run's metrics */
      metrics: boolean;
    }
  | { kind: 'role'; role: Role }
  /** untagged, but the server's analysis gives it a role (panel.py `inferred_roles`) */
  | { kind: 'inferred'; role: Role; scope: string; why: string }
  | { kind: 'error'; message: string; stage: string | null }
  | { kind: 'none' };

/** The normalised meaning of one cell's tags (only what placement needs). */
export interface IParsedTags {
  role: Role | null;
  stage: string | null;
  type: StageType | null;
  /** has after:/hint/metrics tags, which need the cell to be in a stage */
  needsStage: boolean;
  /** tagged `metrics` (or Kale's `pipeline-metrics`) */
  metrics: boolean;
  errors: string[];
}

/** The minimum a cell must expose: its type and tags. */
export interface ICellInfo {
  cellType: string;
  tags: readonly string[];
}

/** Parse one cell's tags the way `nb2prod.tags.parse_tags` does. */
export function parseTags(tags: readonly string[]): IParsedTags {
  const out: IParsedTags = {
    role: null,
    stage: null,
    type: null,
    needsStage: false,
    metrics: false,
    errors: []
  };
  const setStage = (name: string, type: StageType, tag: string): void => {
    if (!NAME_RE.test(name)) {
      out.errors.push(
        `tag '${tag}': stage names use lowercase letters, digits, '-' and '_' (at most 40)`
      );
      return;
    }
    if (out.stage !== null && (out.stage !== name || out.type !== type)) {
      out.errors.push(`two stage tags on one cell: '${out.stage}' and '${tag}'`);
      return;
    }
    out.stage = name;
    out.type = type;
  };
  for (const raw of tags) {
    const tag = raw.trim();
    if (!tag) {
      continue;
    }
    const colon = tag.indexOf(':');
    const key = colon >= 0 ? tag.slice(0, colon) : tag;
    const value = colon >= 0 ? tag.slice(colon + 1) : '';
    if (Object.prototype.hasOwnProperty.call(ROLE_TAGS, tag)) {
      const role = ROLE_TAGS[tag];
      if (out.role !== null && out.role !== role) {
        out.errors.push(`tags '${out.role}' and '${tag}' cannot be on the same cell`);
      }
      out.role = role;
    } else if (tag === 'train') {
      setStage('train', 'batch', tag);
    } else if (tag === 'serve' || key === 'serve') {
      setStage(key === 'serve' && value ? value : 'serve', 'service', tag);
    } else if (colon >= 0 && BATCH_PREFIXES.includes(key)) {
      if (!value) {
        out.errors.push(`tag '${tag}' has an empty stage name`);
      } else {
        setStage(value, 'batch', tag);
      }
    } else if (METRICS_TAGS.includes(tag)) {
      out.needsStage = true;
      out.metrics = true;
    } else if (colon >= 0 && STAGE_ONLY_PREFIXES.includes(key)) {
      out.needsStage = true;
    }
  }
  return out;
}

/**
 * One marker per cell, in order: untagged code cells join the stage of the
 * nearest stage-tagged cell above (Kale's rule); code cells before the first
 * stage tag and non-code cells get `none`.
 */
export function computeMarkers(cells: readonly ICellInfo[]): CellMarker[] {
  const markers: CellMarker[] = [];
  const types = new Map<string, StageType>();
  let current: { name: string; type: StageType } | null = null;
  for (const cell of cells) {
    if (cell.cellType !== 'code') {
      markers.push({ kind: 'none' });
      continue;
    }
    const parsed = parseTags(cell.tags);
    if (parsed.role !== null && parsed.stage !== null) {
      markers.push({
        kind: 'error',
        message: `a '${parsed.role}' cell cannot also start stage '${parsed.stage}'`,
        stage: current ? current.name : null
      });
      continue;
    }
    if (parsed.role !== null) {
      markers.push(
        parsed.errors.length
          ? { kind: 'error', message: parsed.errors.join('; '), stage: null }
          : { kind: 'role', role: parsed.role }
      );
      continue;
    }
    let start = false;
    if (parsed.stage !== null && parsed.type !== null) {
      const known = types.get(parsed.stage);
      if (known !== undefined && known !== parsed.type) {
        parsed.errors.push(`stage '${parsed.stage}' is tagged both batch and service`);
      } else {
        types.set(parsed.stage, parsed.type);
      }
      current = { name: parsed.stage, type: known ?? parsed.type };
      start = true;
    }
    if (parsed.errors.length) {
      markers.push({
        kind: 'error',
        message: parsed.errors.join('; '),
        stage: current ? current.name : null
      });
    } else if (current === null && parsed.needsStage) {
      markers.push({
        kind: 'error',
        message:
          'this cell has stage tags but belongs to no stage; ' +
          'tag it (or a cell above) with stage:NAME',
        stage: null
      });
    } else if (current === null) {
      markers.push({ kind: 'none' });
    } else {
      markers.push({
        kind: 'stage', name: current.name, type: current.type, start, metrics: parsed.metrics
      });
    }
  }
  return markers;
}

/** Tags this extension treats as "the cell's stage" (replaced by set-stage). */
export function isStageOrRoleTag(tag: string): boolean {
  const t = tag.trim();
  const key = t.includes(':') ? t.slice(0, t.indexOf(':')) : t;
  return (
    Object.prototype.hasOwnProperty.call(ROLE_TAGS, t) ||
    t === 'train' ||
    t === 'serve' ||
    key === 'serve' ||
    (t.includes(':') && BATCH_PREFIXES.includes(key))
  );
}

/** The stage names used in a notebook, in order, for suggestions. */
export function stageNames(markers: readonly CellMarker[]): string[] {
  const names: string[] = [];
  for (const m of markers) {
    if (m.kind === 'stage' && !names.includes(m.name)) {
      names.push(m.name);
    }
  }
  return names;
}

/**
 * Stage colours: well separated hues, each dark enough that white marker
 * text on it has at least 4.5:1 contrast (WCAG AA), in light and dark themes
 * alike (the marker carries its own background).
 */
export const STAGE_PALETTE = [
  '#1f5fa8', '#a3361f', '#2e7d32', '#6a3d9a', '#b0357a', '#00695c',
  '#8a5a00', '#455a64', '#3949ab', '#ad1457', '#5d4037', '#006c75'
];

/**
 * The colour of each stage: palette entries in order of first appearance in
 * the notebook, so no two of the first twelve stages share a colour and a
 * stage keeps its colour across reloads; further stages get a hashed hue.
 */
export function stageColors(names: readonly string[]): Map<string, string> {
  const colors = new Map<string, string>();
  names.forEach((name, i) => {
    if (!colors.has(name)) {
      colors.set(name, i < STAGE_PALETTE.length ? STAGE_PALETTE[i] : hashedColor(name));
    }
  });
  return colors;
}

/** A stable dark colour for a stage name beyond the palette (or without an order). */
export function hashedColor(name: string): string {
  let hash = 0;
  for (let i = 0; i < name.length; i++) {
    hash = (hash * 31 + name.charCodeAt(i)) >>> 0;
  }
  const hue = (hash * 137) % 360;
  return `hsl(${hue}, 60%, 26%)`;
}

/** The colours of the notebook last marked: dialogs show stages in the same colours. */
let current = new Map<string, string>();

export function rememberStageColors(colors: Map<string, string>): void {
  current = colors;
}

/** A stage's colour as its cells' markers show it. */
export function stageColor(name: string): string {
  return current.get(name) ?? hashedColor(name);
}

/** Colours of stages given with their cells, in order of their first cell. */
export function colorsOfStages(stages: readonly { name: string; cells: number[] }[]): Map<string, string> {
  const first = (cells: number[]): number => (cells.length ? Math.min(...cells) : Infinity);
  return stageColors([...stages].sort((a, b) => first(a.cells) - first(b.cells)).map(s => s.name));
}
