"""Server-side workflows: a job of kind "workflow" whose child jobs (parent_id) run its steps, advanced by
the workers and the API's sweep — never by the browser — so it survives a closed tab, an API restart and
a lost worker.

- definitions: workflows as data (branches, the steps of each, the final step); the bake-off, of which
  the depth-vs-width study is the case of two candidates
- advance: one idempotent, concurrency-safe look that creates the next children
- control: cancel (with the children) and retry (failed steps only)
- runner: advance + commit + publish, and the sweep over every workflow that may move
- view: the JSON the API and the dashboard read
"""
