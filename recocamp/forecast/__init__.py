"""Per-customer purchase forecasts: purchase days in a horizon, the chance of buying again
(churn risk), expected revenue and lifetime value, when the next purchase is due (pure).

Owns: purchase-day histories (:mod:`.history`), the buy-till-you-die models BG/NBD and
Gamma-Gamma (:mod:`.btyd`), the forecasters — ``naive``, ``bgnbd``, our ``rhythm`` and
``hurdle``, and ``blend``, the mean of the last three (:mod:`.models`) —, their evaluation on
a time split (:mod:`.evaluate`) and the per-customer outlook with the choice of the live
forecaster (:mod:`.outlook`), all pure: values in, values out. :mod:`.stored` (not pure)
computes the forecasts the ``train`` job stores and reads them back for the shop API and the CLI.

Exports: :class:`PurchaseDays`, :class:`History`, :class:`BgNbd`, :class:`GammaGamma`,
:data:`FORECASTERS`, :func:`forecast`, :func:`evaluate`, :func:`live_model`,
:class:`CustomerForecast`, :class:`Evaluation`, :class:`Quality`, :func:`documents`,
:func:`poisson_median`, :func:`refresh`, :func:`purchase_days`, :func:`document`,
:func:`closed` (whether the data reaches a horizon's last day), :func:`newest_day`.
"""

from recocamp.forecast.btyd import BgNbd, GammaGamma
from recocamp.forecast.evaluate import Quality, poisson_median
from recocamp.forecast.history import History, PurchaseDays, day_number, day_of, local_days
from recocamp.forecast.models import FORECASTERS
from recocamp.forecast.outlook import (
    CustomerForecast,
    Evaluation,
    LiveChoice,
    closed,
    documents,
    evaluate,
    forecast,
    live_model,
)
from recocamp.forecast.stored import document, newest_day, purchase_days, refresh

__all__ = [
    "FORECASTERS",
    "BgNbd",
    "CustomerForecast",
    "Evaluation",
    "GammaGamma",
    "History",
    "LiveChoice",
    "PurchaseDays",
    "Quality",
    "closed",
    "day_number",
    "day_of",
    "document",
    "documents",
    "evaluate",
    "forecast",
    "live_model",
    "local_days",
    "newest_day",
    "poisson_median",
    "purchase_days",
    "refresh",
]
