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
alpha = 1.0

# %% tags=["imports"]
# nb2prod: left out imports this stage never uses: np
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Ridge
from sklearn.model_selection import train_test_split

# %% tags=["stage:train"]
X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=0)
regressor = Ridge(alpha=alpha)
regressor.fit(X_train, y_train)

# %% tags=["metrics"]
r2 = regressor.score(X_test, y_test)
r2

# %%
# nb2prod: save outputs for later stages
import nb2prod_runtime as _nb2prod

_nb2prod.save({name: globals()[name] for name in ["regressor"] if name in globals()});

# %%
# nb2prod: record metrics of this stage
import nb2prod_runtime as _nb2prod

_nb2prod.record_metrics({name: globals().get(name) for name in ["r2"]});

# %%
# nb2prod: record a sample request for the service: the first rows of `X_train`, which the model is fitted on
import nb2prod_runtime as _nb2prod

_nb2prod.record_sample(globals().get("X_train"), key="instances", records=False);
