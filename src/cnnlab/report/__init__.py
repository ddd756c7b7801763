"""cnnlab.report: study figures and the Markdown/HTML report.

``render.write_report(study_dir)`` is the entry point; ``plots`` draws the PNGs,
``document`` is the content model that ``markdown`` and ``html`` render.
"""
