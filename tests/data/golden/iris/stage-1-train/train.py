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
test_size = 0.2
random_state = 42
max_iter = 200

# %% tags=["imports"]
# nb2prod: left out imports this stage never uses: np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

# %% tags=["train"]
iris = load_iris()
species = [str(name) for name in iris.target_names]
X_train, X_test, y_train, y_test = train_test_split(
    iris.data, iris.target, test_size=test_size, random_state=random_state, stratify=iris.target
)

# %%
model = LogisticRegression(max_iter=max_iter)
model.fit(X_train, y_train)

# %% tags=["metrics"]
accuracy = model.score(X_test, y_test)
print(f"test accuracy: {accuracy:.3f}")

# %%
# nb2prod: save outputs for later stages
import nb2prod_runtime as _nb2prod

_nb2prod.save({name: globals()[name] for name in ["model", "species"] if name in globals()});

# %%
# nb2prod: record metrics of this stage
import nb2prod_runtime as _nb2prod

_nb2prod.record_metrics({name: globals().get(name) for name in ["accuracy"]});
