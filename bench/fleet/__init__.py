"""`python -m bench fleet`: SayPI instances behind HAProxy through a rolling restart, a crash
and a database restart. `orchestration` runs them, `load` sends the requests, `analysis`
counts what happened per phase, `report` writes it as Markdown.
"""
