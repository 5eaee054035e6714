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
# nb2prod: left out imports this stage never uses: LogisticRegression, RandomForestClassifier, StandardScaler, make_pipeline, np
from sklearn.datasets import load_wine
from sklearn.model_selection import train_test_split

# %% tags=["stage:prepare", "cpu:250m", "memory:256Mi"]
wine = load_wine()
classes = [str(name) for name in wine.target_names]
X_train, X_test, y_train, y_test = train_test_split(
    wine.data, wine.target, test_size=0.25, random_state=random_state, stratify=wine.target
)

# %%
# nb2prod: save outputs for later stages
import nb2prod_runtime as _nb2prod

_nb2prod.save({name: globals()[name] for name in ["X_train", "y_train", "X_test", "y_test", "classes"] if name in globals()});
