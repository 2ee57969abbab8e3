"""The six models of Table 2: which branches each variant builds and what it ranks by.

=============  ========================  =====================  ==================
variant        feature branch F(x)       metric branch M        ranks by
=============  ========================  =====================  ==================
``cnn``        mean of fc7 ("CNN")       —                      distance of F
``cnn_rnn``    LSTM, mean of outputs     —                      distance of F
``cnn_tam``    TemporalAttention (Eq.3)  —                      distance of F
``cnn_diff``   —                         DifferenceHead         M
``cnn_srm``    —                         SpatialRecurrentModel  M
``all``        TemporalAttention         SpatialRecurrentModel  S of Eq. 2
=============  ========================  =====================  ==================

Plain tables, imported by ``ModelConfig`` (which validates ``variant``) and by ``JSTRNN``
(which builds from them); they live here so neither has to import the other.
"""

VARIANTS = ("cnn", "cnn_rnn", "cnn_tam", "cnn_diff", "cnn_srm", "all")
FEATURE_BRANCH = {"cnn": "avg", "cnn_rnn": "rnn", "cnn_tam": "tam", "all": "tam"}  # temporal model of F(x)
METRIC_BRANCH = {"cnn_diff": "diff", "cnn_srm": "srm", "all": "srm"}  # head of M
# what the variant ranks a gallery by (``similarity.pair_score`` kinds)
RANKING = {"cnn": "distance", "cnn_rnn": "distance", "cnn_tam": "distance",
           "cnn_diff": "metric", "cnn_srm": "metric", "all": "similarity"}
# Table 2's row names
METHOD_NAMES = {"cnn": "CNN", "cnn_rnn": "CNN+RNN", "cnn_tam": "CNN+TAM", "cnn_diff": "CNN+DIFF",
                "cnn_srm": "CNN+SRM", "all": "ALL"}
