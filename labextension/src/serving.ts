/**
 * "Run and serve": while a local run keeps its service stages up, the panel
 * shows each service's URL and a sample request (the curl `nb2prod run`
 * prints, with the sample from the notebook or the training data); the
 * header's "Stop" ends the run and its servers like Ctrl-C.
 */
import * as api from './api';
import { el } from './dialogs';

export function servingSection(launch: api.ILaunch): HTMLElement {
  const node = el('section', 'nb2prod-PanelSection nb2prod-ServingSection');
  node.appendChild(el('h3', 'nb2prod-PanelSection-title', 'Serving'));
  for (const service of launch.services) {
    const item = el('div', 'nb2prod-Serving');
    item.dataset.service = service.name;
    const line = el('p', 'nb2prod-Serving-line', `${service.name} (run ${service.run_id}) at `);
    line.appendChild(el('code', 'nb2prod-Serving-url', service.url)); // POST only: no link
    item.appendChild(line);
    item.appendChild(el('pre', 'nb2prod-Serving-curl', service.curl));
    const copy = el('button', 'jp-Button jp-mod-styled jp-mod-reject nb2prod-Serving-copy',
                    'Copy curl');
    copy.addEventListener('click', () => {
      void navigator.clipboard?.writeText(service.curl).then(() => {
        copy.textContent = 'Copied';
      });
    });
    item.appendChild(copy);
    node.appendChild(item);
  }
  node.appendChild(el('p', 'nb2prod-Serving-note',
    'The servers stay up until Stop (the tab may be closed meanwhile).'));
  return node;
}
