# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: *
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
random_state = 0
n_estimators = 50

# %% tags=["imports"]
# nb2prod: left out imports this stage never uses: LogisticRegression, RandomForestClassifier, StandardScaler, load_wine, make_pipeline, np, train_test_split

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

X_test = _nb2prod.load("X_test", producer="prepare")
forest = _nb2prod.load("forest", producer="train_forest")
logreg = _nb2prod.load("logreg", producer="train_logreg")
y_test = _nb2prod.load("y_test", producer="prepare")

# %% tags=["stage:evaluate"]
scores = {"forest": forest.score(X_test, y_test), "logreg": logreg.score(X_test, y_test)}
best_name = max(scores, key=scores.get)
best_model = forest if best_name == "forest" else logreg

# %% tags=["metrics"]
accuracy = scores[best_name]
forest_accuracy = scores["forest"]
logreg_accuracy = scores["logreg"]
print(best_name, accuracy)

# %%
# nb2prod: save outputs for later stages
import nb2prod_runtime as _nb2prod

_nb2prod.save({name: globals()[name] for name in ["best_model", "best_name"] if name in globals()});

# %%
# nb2prod: record metrics of this stage
import nb2prod_runtime as _nb2prod

_nb2prod.record_metrics({name: globals().get(name) for name in ["accuracy", "forest_accuracy", "logreg_accuracy"]});
