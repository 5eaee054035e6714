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
# nb2prod: left out imports this stage never uses: LogisticRegression, StandardScaler, load_wine, make_pipeline, np, train_test_split
from sklearn.ensemble import RandomForestClassifier

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

X_train = _nb2prod.load("X_train", producer="prepare")
y_train = _nb2prod.load("y_train", producer="prepare")

# %% tags=["stage:train_forest"]
forest = RandomForestClassifier(n_estimators=n_estimators, random_state=random_state)
forest.fit(X_train, y_train)

# %%
# nb2prod: save outputs for later stages
import nb2prod_runtime as _nb2prod

_nb2prod.save({name: globals()[name] for name in ["forest"] if name in globals()});

# %%
# nb2prod: record a sample request for the service: the first rows of `X_train`, which the model is fitted on
import nb2prod_runtime as _nb2prod

_nb2prod.record_sample(globals().get("X_train"), key="instances", records=False);
