// The memory line of the depth-vs-width study wizard: the study's largest job is a distillation (student
// + teacher + AdamW + activations), so the line sizes both students the wizard will cut at this budget
// (its own depth / width targets) and reports the larger need, against the live workers.
import { distillCandidates, distillMemory, fitLine } from "../memplan.js";
import { memoryLine, queueFor } from "./memline.js";

/** The spec a uniform target gives the teacher's shape (layers kept from the front, or narrower widths). */
export function targetSpec(teacher, target) {
  const spec = { ...teacher };
  if (target.num_layers !== undefined) {
    spec.num_layers = target.num_layers;
    if (Array.isArray(teacher.layers) && teacher.layers.length) spec.layers = teacher.layers.slice(0, target.num_layers);
  }
  if (target.hidden_size !== undefined || target.intermediate_size !== undefined) {
    spec.hidden_size = target.hidden_size ?? teacher.hidden_size;
    spec.intermediate_size = target.intermediate_size ?? teacher.intermediate_size;
    delete spec.layers; // the wizard's width student is uniform
  }
  return spec;
}

/** `studyTargets`: studymath.studyTargets (spec, %, count -> {depth, width}, null where none fits);
 * `distillParams`: form -> the study's distill params (views/runs.js), whose tokens the API checks against its limit. */
export function studyMemoryLine(form, teachers, studyTargets, distillParams) {
  const line = memoryLine(form, (v, workers) => {
    const teacher = teachers.find((t) => String(t.id) === String(v.teacher_id))?.spec;
    if (!teacher || !(v.budget_pct > 0) || !(v.batch_size >= 1) || !(v.seq_len >= 2)) return null;
    const { depth, width } = studyTargets(teacher, v.budget_pct, v.budget_count || "non_embedding");
    const students = [depth, width].filter(Boolean).map((t) => targetSpec(teacher, t));
    if (!students.length) return null;
    const settings = { batch_size: v.batch_size, seq_len: v.seq_len, weights_dtype: v.weights_dtype || "float32", gradient_checkpointing: !!v.gradient_checkpointing };
    const queue = queueFor(v.device || "auto", workers);
    const device = queue === "gpu" ? "cuda" : "cpu";
    const need = (p) => Math.max(...students.map((s) => distillMemory(s, v.baseline ? null : teacher, { ...p, device }).total));
    const out = fitLine(need, settings, workers, queue, distillCandidates(settings));
    const which = students.length > 1 ? `the bigger of the ${students.length} students` : "its one possible student";
    return { ...out, text: `largest step (distilling ${which}) ${out.text}` };
  }, { kind: "distill", params: distillParams });
  line.dataset.testid = "study-memory";
  return line;
}
