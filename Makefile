# am-segm: every set-up step lives here, so a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET := data/inference/dataset
ROWS ?= 50
COLS ?= 50

# Models are built offline: nothing may be fetched from a model hub at run time.
export HF_HUB_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install run test lint sample model gpu-prep gpu-model clean-data help

help:
	@echo "make run      set up, generate the sample dataset if missing, run the pipeline on it"
	@echo "make test     set up and run the test suite (all but the tests marked slow: make test-slow)"
	@echo "make install  create or update the virtual environment in $(VENV)"
	@echo "make lint     ruff over the package, tests, benchmarks, examples and setup.py"
	@echo "make sample   generate the synthetic sample dataset (data/inference/dataset) if missing"
	@echo "make test-faults | test-slow   the fault, bad-input and security tests alone; the tests marked slow"
	@echo "make load-test  one LOAD_SIZE x LOAD_SIZE image (default 20000) through 2 workers: time and peak memory"
	@echo "make clean-data  remove the generated data: the sample dataset and its outputs (data/inference), make load-test's (data/load-test)"
	@echo "make model    train the default model from synthetic data into runs/model/"
	@echo "make gpu-model  on a GPU machine: train resnext50 and fine-tune the compact model for MINUTES (default 6) into runs/gpu/, and measure both against the shipped model"
	@echo "               (AM_SYSTEM_PYTHON=1: with the machine's own python3 and torch, offline, no venv)"
	@echo "make gpu-prep   here, before a GPU lease: wheels the GPU machine lacks into .whl/, real samples into .real/"
	@echo "make image | push | deploy | undeploy | upload-model | task-definition   AWS deployment (see README, Running on AWS)"

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install:
	rm -f $(STAMP)
	$(MAKE) $(STAMP)

# The sample is made once its source/ folder is missing: an interrupted am.synth keeps nothing of its
# run, but may leave the dataset folder itself behind (with its lock file), which must not count as made.
SAMPLE := $(DATASET)/source

$(SAMPLE): | $(STAMP)
	$(BIN)/python -m am.synth dataset $(DATASET) --rows $(ROWS) --cols $(COLS) --seed 7

sample: $(SAMPLE)

# Train the default model from synthetic data (seeded), in six runs, each from the previous one's
# weights on 1500 fresh synthetic images: 50 epochs from scratch and 28 at a lower learning rate,
# both with footprint labels (the generator's earlier truth); 12 epochs with visible-extent labels
# (rounded up to whole pixels, as they were drawn when these runs were made, and so in the runs
# after it); 20 epochs with the tissue between close marks weighted 5 times in the loss; 12 epochs
# with three times the out-of-focus blobs; 10 epochs at a low learning rate with the tissue
# weighted evenly again and the extra blobs kept. It lands in runs/ (ignored by git): copy it to
# am/models/default.pt only when benchmarks/model_quality.py shows it is better than the shipped one.
# The shipped weights were trained before the training crops' labels were aligned with their
# images (docs/model.md, "The runs of make model"): this recipe now trains on aligned labels.
# The runs take about eight hours on two cores, so each is a target of its own, marked done
# (RUN.done) only when it has finished: `make model` again after an interruption skips the runs
# done and continues the interrupted one from its last finished epoch (am.train --resume).
MODEL_RUNS := runs/model
TRAIN_COMMON := --synthetic 1500 --synthetic-size 384 --synthetic-valid 32 --steps-per-epoch 150 --batch-size 8 \
  --crop 256 --threads 2
# $(call train-run,OPTIONS): one am.train run into the checkpoint that RUN.done stands for, resumed
# where an earlier try left its state (RUN.resume) or its record (RUN.metrics.json: a run that
# finished but was not marked done then only says so), then marked done.
train-run = $(BIN)/python -m am.train $(TRAIN_COMMON) $(1) --out $(@:.done=.pt) \
  $(if $(wildcard $(@:.done=.resume) $(@:.done=.metrics.json)),--resume) && touch $@

model: $(MODEL_RUNS)/default.done
	$(BIN)/python benchmarks/model_quality.py --model $(MODEL_RUNS)/default.pt --precision fp32

$(MODEL_RUNS)/base.done: | $(STAMP)
	$(call train-run,--epochs 50 --lr 3e-3 --warmup-steps 200 --seed 0 --synthetic-labels footprint)
$(MODEL_RUNS)/footprint.done: $(MODEL_RUNS)/base.done
	$(call train-run,--init $(<:.done=.pt) --synthetic-seed 11 --epochs 28 --lr 1e-3 --warmup-steps 50 --seed 1 \
	  --synthetic-labels footprint)
$(MODEL_RUNS)/visible.done: $(MODEL_RUNS)/footprint.done
	$(call train-run,--init $(<:.done=.pt) --synthetic-seed 21 --epochs 12 --lr 5e-4 --warmup-steps 50 --seed 2 \
	  --synthetic-labels margin)
$(MODEL_RUNS)/gaps.done: $(MODEL_RUNS)/visible.done
	$(call train-run,--init $(<:.done=.pt) --synthetic-seed 31 --epochs 20 --lr 5e-4 --warmup-steps 50 --seed 3 \
	  --gap-weight 5 --synthetic-labels margin)
$(MODEL_RUNS)/blobs.done: $(MODEL_RUNS)/gaps.done
	$(call train-run,--init $(<:.done=.pt) --synthetic-seed 41 --epochs 12 --lr 3e-4 --warmup-steps 50 --seed 4 \
	  --gap-weight 5 --synthetic-blobs 3 --synthetic-labels margin)
$(MODEL_RUNS)/default.done: $(MODEL_RUNS)/blobs.done
	$(call train-run,--init $(<:.done=.pt) --synthetic-seed 51 --epochs 10 --lr 2e-4 --warmup-steps 50 --seed 5 \
	  --synthetic-blobs 3 --synthetic-labels margin)

# The production encoder and a GPU fine-tune of the compact one, time-boxed for a GPU machine held for minutes
# (benchmarks/gpu_train.sh says more).
# AM_SYSTEM_PYTHON=1 runs it with $(PYTHON) as it is (a GPU machine's own torch, offline), building no venv.
GPU_PYTHON := $(if $(filter 1,$(AM_SYSTEM_PYTHON)),$(PYTHON),$(BIN)/python)
gpu-model: $(if $(filter 1,$(AM_SYSTEM_PYTHON)),,$(STAMP))
	PYTHON=$(GPU_PYTHON) bash benchmarks/gpu_train.sh

# Before a lease, on this machine: the packages an offline GPU machine lacks, as wheels of the venv's
# versions in .whl/, and the real samples in .real/ (both git-ignored); prints the device call.
gpu-prep: $(STAMP)
	$(BIN)/python benchmarks/gpu_prep.py

run: $(STAMP) $(SAMPLE)
	$(BIN)/python -m am.pipeline $(DATASET) --rows $(ROWS) --cols $(COLS)

test: $(STAMP)
	$(BIN)/python -m ruff check am tests benchmarks examples setup.py
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/python -m ruff check am tests benchmarks examples setup.py

clean-data:
	rm -rf data/inference data/load-test

LOAD_SIZE ?= 20000
.PHONY: test-faults test-slow load-test
test-faults: $(STAMP)   # fault, bad-input and security tests alone (also part of make test)
	$(BIN)/python -m pytest tests/faults
test-slow: $(STAMP)     # tests marked slow, e.g. the endpoint dying mid-job
	$(BIN)/python -m pytest -m slow
load-test: $(STAMP)     # one LOAD_SIZE x LOAD_SIZE image, 2 workers: prints time and peak memory per process
	$(BIN)/python benchmarks/load_test.py --size $(LOAD_SIZE) --workers 2

# ---- AWS: needs Docker (image, push) and the AWS CLI with credentials (deploy, push, undeploy).
STACK ?= am-segm
# As the pipeline finds the stack: AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1.
AWS_REGION ?= $(or $(AWS_DEFAULT_REGION),us-east-1)
IMAGE_NAME ?= am-segm-worker
IMAGE_TAG ?= latest
VPC_ID ?=
SUBNET_IDS ?=
STACK_PARAMS ?=
AWS := aws --region $(AWS_REGION)
# Stack states whose outputs name resources that exist: only then can am.scale drain the workers.
USABLE_STACK_STATES := CREATE_COMPLETE UPDATE_COMPLETE UPDATE_ROLLBACK_COMPLETE IMPORT_COMPLETE IMPORT_ROLLBACK_COMPLETE
# $(call stack-output,KEY,VAR): a recipe fragment that sets the shell variable VAR to one output of
# the deployed stack. The CLI's own error (credentials, region, no such stack) reaches the terminal
# as it is (stderr is not captured, so no warning of the CLI's can end up in the value), and only a
# stack that answers without that output is told to run make deploy.
stack-output = $(2)=$$($(AWS) cloudformation describe-stacks --stack-name $(STACK) \
	--query "Stacks[0].Outputs[?OutputKey=='$(1)'].OutputValue" --output text) || { \
	  echo "cannot read stack $(STACK) in region $(AWS_REGION) (the AWS CLI's error is above)" >&2; exit 1; }; \
	case "$$$(2)" in ""|None) echo "stack $(STACK) in region $(AWS_REGION) has no $(1) output: run make deploy \
	  first (or set STACK=, AWS_REGION= to where it was deployed)" >&2; exit 1;; esac

.PHONY: image push deploy undeploy upload-model task-definition

image:
	docker build -f Dockerfile.worker --target worker -t $(IMAGE_NAME):$(IMAGE_TAG) .

push: image
	@$(call stack-output,RepositoryUri,repo); \
	$(AWS) ecr get-login-password | docker login --username AWS --password-stdin "$${repo%%/*}" && \
	docker tag $(IMAGE_NAME):$(IMAGE_TAG) "$$repo:$(IMAGE_TAG)" && \
	docker push "$$repo:$(IMAGE_TAG)"

# The service's state and (in undeploy) the stack's status are read with the CLI's stderr kept apart:
# a warning the CLI prints on a successful call is shown, not taken for the value.
deploy:
	@test -n "$(VPC_ID)" && test -n "$(SUBNET_IDS)" || \
	  { echo "set VPC_ID=vpc-... SUBNET_IDS=subnet-a,subnet-b (subnets with a route to S3, SQS, ECR, Logs)" >&2; exit 2; }
	@err=$$(mktemp) && trap 'rm -f "$$err"' EXIT && \
	service=$$($(AWS) cloudformation describe-stack-resource --stack-name $(STACK) --logical-resource-id Service \
	    --query "StackResourceDetail.ResourceStatus" --output text 2>"$$err") || { \
	  case "$$(cat "$$err")" in *"does not exist"*) service=none;; \
	    *) echo "cannot read the worker service of stack $(STACK): $$(cat "$$err")" >&2; exit 1;; esac; }; \
	cat "$$err" >&2; \
	case "$$service" in none|CREATE_FAILED|DELETE_*) exists=false;; *) exists=true;; esac; \
	echo "deploying stack $(STACK) (worker service exists: $$exists)"; \
	$(AWS) cloudformation deploy --stack-name $(STACK) --template-file infra/am-segm.yml \
	  --capabilities CAPABILITY_NAMED_IAM --no-fail-on-empty-changeset \
	  --parameter-overrides VpcId=$(VPC_ID) SubnetIds=$(SUBNET_IDS) ImageTag=$(IMAGE_TAG) ServiceExists=$$exists \
	  $(STACK_PARAMS)
	$(AWS) cloudformation describe-stacks --stack-name $(STACK) --query "Stacks[0].Outputs" --output table

upload-model: $(STAMP)
	@test -f "$(MODEL)" || { echo "set MODEL=path/to/checkpoint.pt" >&2; exit 2; }
	$(BIN)/python -m am.model "$(MODEL)"
	@$(call stack-output,ModelUri,uri); \
	$(AWS) s3 cp "$(MODEL)" "$$uri"

# The variables ecs/README.md lists; a missing one is named, and no half-rendered file is left. It is
# registered in REGION, the region its logs go to (not AWS_REGION's default).
task-definition: $(STAMP)
	mkdir -p build
	$(BIN)/python ecs/render_task_definition.py ecs/task-definition.json build/task-definition.json
	aws --region "$$REGION" ecs register-task-definition --cli-input-json file://build/task-definition.json

# A stack that failed (ROLLBACK_COMPLETE, DELETE_FAILED, UPDATE_ROLLBACK_FAILED, ...) is deleted
# too: draining needs its outputs, so it is skipped, and the buckets to empty come from the
# stack's resources, each emptied only if it still exists.
# The capacity provider's managed termination protection leaves the GPU instances protected from
# scale-in, and deleting the capacity provider does not lift it: the stack's delete would then wait
# on an auto scaling group it cannot empty. Once the workers are drained, the protection is lifted.
# The stack keeps each worker task definition an update replaced (a running job may still start
# workers from it): once the stack is gone, the revisions of its family are deregistered.
undeploy: $(STAMP)
	@err=$$(mktemp) && trap 'rm -f "$$err"' EXIT && \
	status=$$($(AWS) cloudformation describe-stacks --stack-name $(STACK) --query "Stacks[0].StackStatus" \
	    --output text 2>"$$err") || { \
	  case "$$(cat "$$err")" in *"does not exist"*) echo "stack $(STACK) does not exist in $(AWS_REGION): nothing to delete"; exit 0;; esac; \
	  echo "cannot read stack $(STACK): $$(cat "$$err")" >&2; exit 1; }; \
	cat "$$err" >&2; \
	case " $(USABLE_STACK_STATES) " in \
	  *" $$status "*) $(BIN)/python -m am.scale --stack $(STACK) --region $(AWS_REGION) drain --wait 600 || exit 1;; \
	  *) echo "stack $(STACK) is $$status: not draining its workers (its outputs may name nothing); deleting it" >&2;; \
	esac; \
	for key in InputBucket OutputBucket; do \
	  bucket=$$($(AWS) cloudformation describe-stack-resource --stack-name $(STACK) --logical-resource-id $$key \
	    --query "StackResourceDetail.PhysicalResourceId" --output text 2>/dev/null); \
	  if [ -n "$$bucket" ] && [ "$$bucket" != None ] && $(AWS) s3api head-bucket --bucket "$$bucket" >/dev/null 2>&1; then \
	    $(AWS) s3 rm "s3://$$bucket" --recursive || exit 1; \
	  else echo "$$key of stack $(STACK) is gone (or cannot be read): not emptying it"; fi; \
	done; \
	asg=$$($(AWS) cloudformation describe-stack-resource --stack-name $(STACK) --logical-resource-id AutoScalingGroup \
	  --query "StackResourceDetail.PhysicalResourceId" --output text 2>/dev/null); \
	if [ -n "$$asg" ] && [ "$$asg" != None ]; then \
	  protected=$$($(AWS) autoscaling describe-auto-scaling-groups --auto-scaling-group-names "$$asg" \
	    --query "AutoScalingGroups[0].Instances[?ProtectedFromScaleIn].InstanceId" --output text) || exit 1; \
	  if [ -n "$$protected" ] && [ "$$protected" != None ]; then \
	    echo "lifting the scale-in protection of instances $$protected, so that their group can be deleted"; \
	    printf '%s\n' $$protected | xargs -n 50 $(AWS) autoscaling set-instance-protection \
	      --auto-scaling-group-name "$$asg" --no-protected-from-scale-in --instance-ids || exit 1; \
	  fi; \
	fi; \
	echo "deleting stack $(STACK) (waiting until CloudFormation is done)"; \
	$(AWS) cloudformation delete-stack --stack-name $(STACK) && \
	$(AWS) cloudformation wait stack-delete-complete --stack-name $(STACK) || { \
	  echo "stack $(STACK) was not deleted: read why with 'aws cloudformation describe-stack-events --stack-name $(STACK)';" \
	    "a resource that cannot be deleted can be kept with 'aws cloudformation delete-stack --retain-resources ...'" >&2; \
	  exit 1; }; \
	revisions=$$($(AWS) ecs list-task-definitions --family-prefix $(STACK)-worker --status ACTIVE \
	  --query "taskDefinitionArns[]" --output text) || { \
	  echo "stack $(STACK) deleted, but its earlier worker task definitions could not be listed; deregister" \
	    "them with 'aws ecs deregister-task-definition' (family $(STACK)-worker)" >&2; exit 1; }; \
	for arn in $$revisions; do \
	  case "$$arn" in */$(STACK)-worker:*) \
	    $(AWS) ecs deregister-task-definition --task-definition "$$arn" >/dev/null || { \
	      echo "stack $(STACK) deleted, but task definition $$arn could not be deregistered" >&2; exit 1; };; \
	  esac; \
	done; \
	echo "stack $(STACK) deleted; its model bucket is kept (DeletionPolicy Retain, versioned): README's step 6," \
	  "'Tear down', says how to delete it with every object version"
