"""The field app: technicians' checklists on the phone, sign-off, the ops-lead board.

Importing this package is cheap; FastAPI is imported by `bigbang.web.app` only.
"""
