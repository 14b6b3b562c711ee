"""The report wing: what people look at after a label run.

`html` is `mmsa-ray report` (an offline HTML page: timelines beside a player, filters,
summary), `subtitles` the WebVTT / SRT tracks of labeled rows.
"""

from mmsa_ray.report.html import ReportConfig, make_report

__all__ = ["ReportConfig", "make_report"]
