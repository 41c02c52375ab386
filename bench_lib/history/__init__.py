"""The results history: runs of many commits and machines in one database, their trends, the
commits where figures stepped, and a gate against past runs.

- `store`: the database (SQLite file or PostgreSQL) behind `Store`;
- `ingest`: reports and their samples into it (`history add`; `make bench` adds its run);
- `series`: selecting cases and building per-commit series of one machine fingerprint;
- `changepoints`: the steps of a series (memory exact, latency on the fastest round);
- `report`: `history show`, `history report` (Markdown, HTML with trend plots), `history regressions`;
- `gate`: `history gate`, a candidate against the last runs of its machine on a branch;
- `export`: Bencher BMF and github-action-benchmark JSON;
- `audit`: change-point detection measured on a synthetic history built from real runs;
- `cli`: the commands, added to `python -m bench_lib`.
"""
