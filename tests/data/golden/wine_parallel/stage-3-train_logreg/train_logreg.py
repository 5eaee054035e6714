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
# nb2prod: left out imports this stage never uses: RandomForestClassifier, load_wine, np, train_test_split
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# %%
# nb2prod: load inputs saved by earlier stages (sha256-checked)
import nb2prod_runtime as _nb2prod

X_train = _nb2prod.load("X_train", producer="prepare")
y_train = _nb2prod.load("y_train", producer="prepare")

# %% tags=["stage:train_logreg"]
logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
logreg.fit(X_train, y_train)

# %%
# nb2prod: save outputs for later stages
import nb2prod_runtime as _nb2prod

_nb2prod.save({name: globals()[name] for name in ["logreg"] if name in globals()});
