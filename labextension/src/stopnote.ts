/**
 * A stop note: who pressed Stop on a run or deploy, and when (the server keeps it
 * beside the launch, `nb2prod/runners/interrupts.py`), in the words the server uses.
 */
import { IStopNote } from './api';

/** `stopped by NAME (VIA) at HH:MM:SS UTC`, exactly as `interrupts.stopped_text`. */
export function stoppedText(note: IStopNote): string {
  const at = new Date(note.at * 1000).toISOString().slice(11, 19);
  return `stopped by ${note.by}${note.via ? ` (${note.via})` : ''} at ${at} UTC`;
}
