"""The one table of methods known not to change the object they are called on.

Without types, a method call ``x.m(...)`` is judged by its name: a name in this
table reads ``x``; any other name counts as mutating ``x`` (``model.fit(X)``),
which makes the calling stage a *producer* of ``x``.  A missing read-only name
therefore costs a spurious save/load and DAG edge (and can make a service load
its model from a plotting stage), while a mutating method listed here by
mistake would lose data: so a name goes in only if it is read-only in every
library below that has it (``sort``, ``update``, ``fill``, ``pop``, ``add``,
``construct`` and ``set_params`` stay out).  Pandas methods that take
``inplace=True`` are listed: that keyword (and numpy's ``out=``) makes any
call a mutation.
"""

from __future__ import annotations

READ_ONLY_METHODS: dict[str, frozenset[str]] = {
    "python": frozenset({
        # str, dict, list, tuple readers; file-like `read*` calls are not listed (they move
        # the position)
        "copy", "count", "index", "get", "items", "keys", "values", "format", "join", "split",
        "rsplit", "splitlines", "strip", "lstrip", "rstrip", "startswith", "endswith", "lower",
        "upper", "title", "capitalize", "casefold", "find", "rfind", "replace", "encode",
        "decode", "zfill", "isdigit", "isalpha", "isnumeric", "isspace", "partition",
        "rpartition", "issubset", "issuperset", "isdisjoint", "union", "intersection",
        "difference", "symmetric_difference", "hex", "is_integer", "bit_length",
        "as_posix", "exists", "is_file", "is_dir", "resolve", "relative_to", "with_suffix",
        "with_name", "joinpath", "glob", "rglob", "iterdir", "read_text", "read_bytes",
    }),
    "numpy": frozenset({
        "ravel", "flatten", "reshape", "transpose", "swapaxes", "squeeze", "view", "astype",
        "tolist", "tobytes", "tofile", "item", "sum", "mean", "std", "var", "min", "max",
        "prod", "cumsum", "cumprod", "ptp", "argmax", "argmin", "argsort", "argpartition",
        "nonzero", "all", "any", "round", "clip", "dot", "take", "repeat", "diagonal",
        "trace", "conj", "conjugate", "searchsorted", "compress", "choose", "getfield",
        "dump", "dumps",
    }),
    "pandas": frozenset({
        "head", "tail", "describe", "info", "sample", "median", "mode", "quantile", "nunique",
        "unique", "value_counts", "idxmax", "idxmin", "nlargest", "nsmallest", "corr", "cov",
        "corrwith", "skew", "kurt", "sem", "mad", "abs", "isna", "isnull", "notna", "notnull",
        "isin", "between", "duplicated", "drop_duplicates", "dropna", "fillna", "drop",
        "rename", "reset_index", "set_index", "sort_values", "sort_index", "query", "where",
        "mask", "replace", "astype", "select_dtypes", "filter", "reindex", "groupby", "agg",
        "aggregate", "apply", "map", "applymap", "transform", "pivot", "pivot_table", "melt",
        "stack", "unstack", "explode", "merge", "join", "shift", "diff", "pct_change", "rank",
        "rolling", "expanding", "ewm", "resample", "iterrows", "itertuples", "memory_usage",
        "to_numpy", "to_dict", "to_list", "to_records", "to_string", "to_html", "to_markdown",
        "to_json", "to_csv", "to_parquet", "to_excel", "to_pickle", "to_frame", "to_sql",
        "to_feather", "plot", "hist", "boxplot", "equals", "first_valid_index",
        "last_valid_index", "assign", "cumcount", "size", "ngroup", "first", "last",
        "combine_first",
    }),
    "scikit-learn": frozenset({
        "predict", "predict_proba", "predict_log_proba", "decision_function", "score",
        "score_samples", "transform", "inverse_transform", "get_params",
        "get_feature_names_out", "get_metadata_routing", "staged_predict",
        "staged_predict_proba", "staged_decision_function", "decision_path", "apply",
        "kneighbors", "kneighbors_graph", "radius_neighbors", "get_depth", "get_n_leaves",
        "get_support", "get_n_splits", "mahalanobis",
    }),
    "xgboost": frozenset({
        "inplace_predict", "get_booster", "get_xgb_params", "get_num_boosting_rounds",
        "evals_result", "get_score", "get_fscore", "get_dump", "dump_model", "save_model",
        "save_raw", "save_config", "trees_to_dataframe", "num_boosted_rounds", "num_features",
        "attributes", "attr", "eval", "eval_set", "get_split_value_histogram", "num_row",
        "num_col", "get_label", "get_weight", "get_base_margin", "get_float_info",
        "get_uint_info", "get_data", "get_group", "slice",
    }),
    "lightgbm": frozenset({
        "feature_name", "feature_importance", "num_trees", "num_feature",
        "num_model_per_iteration", "current_iteration", "model_to_string", "dump_model",
        "save_model", "trees_to_dataframe", "eval", "eval_train", "eval_valid",
        "get_leaf_output", "get_split_value_histogram", "upper_bound", "lower_bound",
        "refit", "get_label", "get_weight", "get_init_score", "get_group", "get_data",
        "get_field", "get_feature_name", "num_data", "get_params",
    }),
}

#: Attributes through which a call reads its receiver: ``df.plot.bar()``,
#: ``s.str.contains("x")``, ``s.dt.year.unique()``.
READ_ONLY_ACCESSORS = frozenset({"plot", "str", "dt", "cat", "sparse", "style", "T"})

PURE_METHODS: frozenset[str] = frozenset().union(*READ_ONLY_METHODS.values())
