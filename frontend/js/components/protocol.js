// Evaluation protocols on screen: which text and window a perplexity was measured on
// (worker/engine/eval_protocol.py), and a clear mark where two numbers were not measured alike.

import { h } from "../dom.js";

/** A small "on <protocol id>" note whose hover is the protocol's definition. */
export function protocolNote(protocol, { testid = "protocol", prefix = "on " } = {}) {
  if (!protocol) return null;
  return h("span.protocol-note", { title: protocol.description, dataset: { testid, protocolId: protocol.id } }, `${prefix}${protocol.id}`);
}

/** Same protocol id, or both unknown: the numbers can be compared. */
export function sameProtocol(a, b) {
  return (a?.id ?? null) === (b?.id ?? null);
}

/** "≠" after a number measured on another protocol than `reference` (the teacher's), with both
 * definitions on hover; null when they agree. */
export function mismatchMark(protocol, reference, { testid = "protocol-mismatch" } = {}) {
  if (!reference || sameProtocol(protocol, reference)) return null;
  const what = protocol ? `measured on ${protocol.id}: ${protocol.description}` : "measured on an unknown protocol (before protocols were recorded)";
  return h("span.protocol-mismatch", {
    title: `Not comparable with numbers on the teacher's protocol (${reference.id}): ${what}`,
    dataset: { testid, protocolId: protocol?.id ?? "" },
  }, "≠");
}
