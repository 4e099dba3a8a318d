"""The plugin's evaluation: the list, popularity-strata and cold-start protocols (``protocols``)
and the graded NDCG metric they report (``metrics``)."""
