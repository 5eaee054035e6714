/**
 * Cell roles: the pure rules behind the "Cell role…" form (DESIGN.md "Cell tags").
 *
 * A cell has one place (a batch stage, a service stage, imports, functions,
 * parameters, skip, or "join the stage above") plus options that only make
 * sense inside a stage: metrics, no-cache, `after:` edges and resource hints.
 * `readRole` turns tags into that shape (Kale spellings included) to pre-fill
 * the form; `roleTags` writes it back, replacing every tag of ours and keeping
 * foreign ones.  A stage can never be named like a role or a tag keyword.
 */
import { isStageOrRoleTag, NAME_RE } from './stages';

export type Place = 'stage' | 'serve' | 'imports' | 'functions' | 'parameters' | 'skip' | 'join';

export interface IRole {
  place: Place;
  /** the stage name, for `stage` and `serve` */
  name: string;
  metrics: boolean;
  noCache: boolean;
  after: string[];
  /** cpu, memory, gpu, image (empty: not set) */
  hints: { [key: string]: string };
  /** NAME:KEY:ENV */
  secrets: string[];
}

export const PLACES: { place: Place; label: string }[] = [
  { place: 'stage', label: 'starts batch stage…' },
  { place: 'serve', label: 'starts service stage…' },
  { place: 'join', label: 'joins the stage above (no tag)' },
  { place: 'imports', label: 'imports (every stage)' },
  { place: 'functions', label: 'functions (every stage)' },
  { place: 'parameters', label: 'parameters (every stage, overridable)' },
  { place: 'skip', label: 'skip (in no stage)' }
];

export const HINT_KEYS = ['cpu', 'memory', 'gpu', 'image'];

/** Words a stage may not be called: roles and tag keywords would read as them. */
const RESERVED = new Set([
  'imports', 'functions', 'parameters', 'pipeline-parameters', 'metrics', 'pipeline-metrics',
  'skip', 'no-cache', 'after', 'prev', 'stage', 'step', 'block', 'cpu', 'memory', 'gpu',
  'image', 'secret', 'limit'
]);

const EDGE_PREFIXES = ['after', 'prev'];
const OPTION_TAGS = ['metrics', 'pipeline-metrics', 'no-cache'];

/** Tags the form owns (replaced on save); anything else is the user's and kept. */
export function isRoleFormTag(tag: string): boolean {
  const t = tag.trim();
  const key = t.includes(':') ? t.slice(0, t.indexOf(':')) : t;
  return (
    isStageOrRoleTag(t) ||
    OPTION_TAGS.includes(t) ||
    (t.includes(':') && [...EDGE_PREFIXES, ...HINT_KEYS, 'secret', 'limit'].includes(key))
  );
}

/** The role a cell's tags give it. */
export function readRole(tags: readonly string[]): IRole {
  const role: IRole = {
    place: 'join', name: '', metrics: false, noCache: false, after: [], hints: {}, secrets: []
  };
  for (const raw of tags) {
    const tag = raw.trim();
    const colon = tag.indexOf(':');
    const key = colon >= 0 ? tag.slice(0, colon) : tag;
    const value = colon >= 0 ? tag.slice(colon + 1) : '';
    if (tag === 'imports' || tag === 'functions' || tag === 'skip') {
      role.place = tag;
    } else if (tag === 'parameters' || tag === 'pipeline-parameters') {
      role.place = 'parameters';
    } else if (tag === 'train') {
      role.place = 'stage';
      role.name = 'train';
    } else if (tag === 'serve' || key === 'serve') {
      role.place = 'serve';
      role.name = value || 'serve';
    } else if (['stage', 'step', 'block'].includes(key) && value) {
      role.place = 'stage';
      role.name = value;
    } else if (tag === 'metrics' || tag === 'pipeline-metrics') {
      role.metrics = true;
    } else if (tag === 'no-cache') {
      role.noCache = true;
    } else if (EDGE_PREFIXES.includes(key) && value) {
      role.after.push(value);
    } else if (HINT_KEYS.includes(key) && value) {
      role.hints[key] = value;
    } else if (key === 'limit' && value.includes(':')) {
      const [resource, quantity] = [value.slice(0, value.indexOf(':')), value.slice(value.indexOf(':') + 1)];
      role.hints[resource === 'nvidia.com/gpu' ? 'gpu' : resource] = quantity;
    } else if (key === 'secret' && value) {
      role.secrets.push(value);
    }
  }
  return role;
}

/** Why `name` cannot name a stage, or null. */
export function stageNameError(name: string): string | null {
  if (!NAME_RE.test(name)) {
    return `'${name}' is not a valid stage name: use lowercase letters, digits, '-' and '_' ` +
      '(at most 40, starting with a letter or digit)';
  }
  if (RESERVED.has(name)) {
    return `'${name}' is a tag of its own, not a stage name: choose it as the cell's role, ` +
      'or name the stage differently';
  }
  return null;
}

/** Problems in a role (empty: it can be saved). */
export function roleErrors(role: IRole): string[] {
  const errors: string[] = [];
  if (role.place === 'stage' || role.place === 'serve') {
    const error = stageNameError(role.name.trim());
    if (error) {
      errors.push(error);
    }
  }
  for (const name of role.after) {
    if (!NAME_RE.test(name)) {
      errors.push(`after: '${name}' is not a stage name`);
    }
  }
  for (const [key, value] of Object.entries(role.hints)) {
    if (value && /\s|:/.test(value) && key !== 'image') {
      errors.push(`${key}: '${value}' must be one quantity such as 0.5, 500Mi or 1`);
    }
  }
  for (const secret of role.secrets) {
    if (!/^[a-z0-9][a-z0-9.-]*:[A-Za-z0-9._-]+:[A-Za-z_][A-Za-z0-9_]*$/.test(secret)) {
      errors.push(`secret '${secret}' must be SECRET-NAME:KEY:ENV_VAR`);
    }
  }
  const inStage = !['imports', 'functions', 'parameters', 'skip'].includes(role.place);
  const hasOptions = role.metrics || role.noCache || role.after.length > 0 ||
    Object.values(role.hints).some(Boolean) || role.secrets.length > 0;
  if (!inStage && hasOptions) {
    errors.push(`a ${role.place} cell runs in every stage or none: metrics, no-cache, after: ` +
      'and resource hints belong on a cell of a stage');
  }
  return errors;
}

/** The tags of a cell after saving `role` over its current `tags` (foreign tags kept). */
export function roleTags(tags: readonly string[], role: IRole): string[] {
  const kept = tags.filter(t => !isRoleFormTag(t));
  const name = role.name.trim();
  const place: string[] = {
    stage: name === 'train' ? ['train'] : [`stage:${name}`],
    serve: name === 'serve' ? ['serve'] : [`serve:${name}`],
    join: [],
    imports: ['imports'],
    functions: ['functions'],
    parameters: ['parameters'],
    skip: ['skip']
  }[role.place];
  const options = [
    ...(role.metrics ? ['metrics'] : []),
    ...(role.noCache ? ['no-cache'] : []),
    ...role.after.map(a => `after:${a}`),
    ...HINT_KEYS.filter(k => role.hints[k]).map(k => `${k}:${role.hints[k].trim()}`),
    ...role.secrets.map(s => `secret:${s}`)
  ];
  return [...kept, ...place, ...options];
}

/** Places a cell runs in no stage of its own with: stage options do not apply there. */
const PRELUDE_PLACES: Place[] = ['imports', 'functions', 'parameters', 'skip'];

/** Whether a role's place takes stage options (metrics, no-cache, after:, resources). */
export function takesOptions(place: Place): boolean {
  return !PRELUDE_PLACES.includes(place);
}

/**
 * `role` moved to `place` (named `name` for a stage): the role menu's one-click
 * change.  Options a prelude or skip cell cannot have are dropped with the move.
 */
export function withPlace(role: IRole, place: Place, name = ''): IRole {
  const moved = { ...role, place, name: place === 'stage' || place === 'serve' ? name : '' };
  return takesOptions(place)
    ? moved
    : { ...moved, metrics: false, noCache: false, after: [], hints: {}, secrets: [] };
}

/** `role` with the `metrics` or `no-cache` option switched. */
export function toggledOption(role: IRole, option: 'metrics' | 'noCache'): IRole {
  return { ...role, [option]: !role[option] };
}

/** `role` with `after:STAGE` added, or removed when it is there. */
export function toggledAfter(role: IRole, stage: string): IRole {
  return {
    ...role,
    after: role.after.includes(stage) ? role.after.filter(a => a !== stage) : [...role.after, stage]
  };
}
