"""Human studies as a web app: PRSR's "% Fooled" (section 5.3) and SRIM's pairwise preference (Table 2).

manifest.py (a study on disk: opaque images and what they are), protocols.py (what a session shows),
storage.py (SQLite), server.py (the web app; needs `pip install -e '.[study]'`), report.py (the statistics and
figures), build.py (a study's images from trained runs), static/ (the page). Everything but server.py and build.py
needs only numpy and Pillow, so the protocol, storage and report run without the web or model dependencies.
"""
