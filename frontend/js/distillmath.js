// A distillation's length as the worker counts it, and the form's warning when its validations would
// all fall outside the run (audit 11: validate-every above the steps gave a curve with no points).

/** The optimizer steps of distill params {steps | tokens, batch_size, seq_len}: a token budget is
 * ceil(tokens / (batch_size x seq_len)) steps, at least 1 (worker/engine/distill_length.total_steps; held
 * equal by tests/ui/test_distill_val_every.py). NaN when the params do not say yet. */
export function totalSteps(p) {
  if (p.tokens) return Math.max(1, Math.ceil(p.tokens / (p.batch_size * p.seq_len)));
  return p.steps ?? NaN;
}

/** "" or the sentence saying that `val_every` is longer than the run: only its first and last
 * validations (before any update, after the last step) would run. */
export function valEveryWarning(p) {
  const steps = totalSteps(p);
  if (!(p.val_every > 0) || !Number.isFinite(steps) || p.val_every <= steps) return "";
  return `Validate every ${p.val_every} steps is more than the run's ${steps} steps: the validation curve gets only its start (step 0) and its end (step ${steps}). Lower it to see the curve in between.`;
}

/** "" or the sentence saying the run ends within its LR warm-up, so it barely trains (audit 11: a 2-step
 * bake-off reported "no flips"). worker/engine/distill_length.warmup_warning, word for word (the API's
 * workflow `warnings`; held equal by tests/ui/test_distill_warmup.py). A warning: a smoke run may want it. */
export function warmupWarning(p) {
  const steps = totalSteps(p);
  if (p.warmup === undefined || p.warmup === null || !Number.isFinite(steps) || steps > p.warmup) return "";
  return `The run's ${steps} steps are all LR warm-up (${p.warmup} steps): the learning rate is still rising when it ends, so the students barely train and a ranking after it says little about distillation. Give more steps (tokens), or a shorter warm-up.`;
}
