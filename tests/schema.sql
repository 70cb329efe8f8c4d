CREATE TABLE access_grants (
	id INTEGER NOT NULL, 
	token_id INTEGER NOT NULL, 
	repo_type VARCHAR(16) NOT NULL, 
	repo_name VARCHAR(200) NOT NULL, 
	granted_by VARCHAR(200) NOT NULL, 
	granted_at DATETIME NOT NULL, 
	CONSTRAINT pk_access_grants PRIMARY KEY (id), 
	CONSTRAINT fk_access_grants_token_id_access_tokens FOREIGN KEY(token_id) REFERENCES access_tokens (id) ON DELETE CASCADE, 
	CONSTRAINT uq_access_grants_token_repo UNIQUE (token_id, repo_type, repo_name)
);
CREATE TABLE access_log (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	token VARCHAR(100), 
	client VARCHAR(64), 
	method VARCHAR(8) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	repo_type VARCHAR(16), 
	repo VARCHAR(200), 
	"commit" VARCHAR(40), 
	path VARCHAR(1000), 
	status INTEGER NOT NULL, 
	bytes_sent BIGINT NOT NULL, 
	outcome VARCHAR(16) NOT NULL, 
	reason VARCHAR(200), 
	CONSTRAINT pk_access_log PRIMARY KEY (id)
);
CREATE TABLE access_tokens (
	id INTEGER NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	lookup VARCHAR(16) NOT NULL, 
	salt VARCHAR(32) NOT NULL, 
	digest VARCHAR(64) NOT NULL, 
	scopes JSON NOT NULL, 
	repos JSON NOT NULL, 
	created_by VARCHAR(200) NOT NULL, 
	created_at DATETIME NOT NULL, 
	expires_at DATETIME, 
	revoked_at DATETIME, 
	CONSTRAINT pk_access_tokens PRIMARY KEY (id), 
	CONSTRAINT uq_access_tokens_lookup UNIQUE (lookup), 
	CONSTRAINT uq_access_tokens_name UNIQUE (name)
);
CREATE TABLE alembic_version (
	version_num VARCHAR(32) NOT NULL, 
	CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);
CREATE TABLE artifacts (
	id INTEGER NOT NULL, 
	revision_id INTEGER NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	parent_commit VARCHAR(40) NOT NULL, 
	recipe_key VARCHAR(64) NOT NULL, 
	recipe JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_artifacts PRIMARY KEY (id), 
	CONSTRAINT fk_artifacts_revision_id_revisions FOREIGN KEY(revision_id) REFERENCES revisions (id) ON DELETE CASCADE, 
	CONSTRAINT uq_artifacts_revision_id UNIQUE (revision_id)
);
CREATE TABLE blobs (
	sha256 VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_blobs PRIMARY KEY (sha256)
);
CREATE TABLE depot_info (
	"key" VARCHAR(64) NOT NULL, 
	value VARCHAR(500) NOT NULL, 
	CONSTRAINT pk_depot_info PRIMARY KEY ("key")
);
CREATE TABLE events (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(200) NOT NULL, 
	action VARCHAR(32) NOT NULL, 
	repo VARCHAR(220), 
	"commit" VARCHAR(40), 
	details JSON NOT NULL, 
	message TEXT, 
	CONSTRAINT pk_events PRIMARY KEY (id)
);
CREATE TABLE files (
	id INTEGER NOT NULL, 
	revision_id INTEGER NOT NULL, 
	path VARCHAR(1000) NOT NULL, 
	size BIGINT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	git_sha1 VARCHAR(40) NOT NULL, 
	lfs BOOLEAN NOT NULL, 
	verification VARCHAR(16) NOT NULL, 
	CONSTRAINT pk_files PRIMARY KEY (id), 
	CONSTRAINT fk_files_revision_id_revisions FOREIGN KEY(revision_id) REFERENCES revisions (id) ON DELETE CASCADE, 
	CONSTRAINT fk_files_sha256_blobs FOREIGN KEY(sha256) REFERENCES blobs (sha256), 
	CONSTRAINT uq_files_revision_id_path UNIQUE (revision_id, path)
);
CREATE TABLE refs (
	id INTEGER NOT NULL, 
	repo_id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	"commit" VARCHAR(40) NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_refs PRIMARY KEY (id), 
	CONSTRAINT fk_refs_repo_id_repos FOREIGN KEY(repo_id) REFERENCES repos (id) ON DELETE CASCADE, 
	CONSTRAINT uq_refs_repo_id_name UNIQUE (repo_id, name)
);
CREATE TABLE repo_names (
	id INTEGER NOT NULL, 
	repo_id INTEGER NOT NULL, 
	type VARCHAR(16) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	source VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_repo_names PRIMARY KEY (id), 
	CONSTRAINT fk_repo_names_repo_id_repos FOREIGN KEY(repo_id) REFERENCES repos (id) ON DELETE CASCADE, 
	CONSTRAINT uq_repo_names_type_name UNIQUE (type, name)
);
CREATE TABLE repos (
	id INTEGER NOT NULL, 
	type VARCHAR(16) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	author VARCHAR(100), 
	pipeline_tag VARCHAR(64), 
	library_name VARCHAR(64), 
	license VARCHAR(64), 
	tags JSON NOT NULL, 
	gated VARCHAR(16), 
	private BOOLEAN NOT NULL, 
	card_data JSON, 
	meta JSON NOT NULL, 
	downloads BIGINT, 
	likes INTEGER, 
	upstream_last_modified DATETIME, 
	upstream_created_at DATETIME, 
	source VARCHAR(500), 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, served_downloads BIGINT DEFAULT '0' NOT NULL, 
	CONSTRAINT pk_repos PRIMARY KEY (id), 
	CONSTRAINT uq_repos_type_name UNIQUE (type, name)
);
CREATE TABLE revisions (
	id INTEGER NOT NULL, 
	repo_id INTEGER NOT NULL, 
	"commit" VARCHAR(40) NOT NULL, 
	parent_commit VARCHAR(40), 
	source VARCHAR(16) NOT NULL, 
	complete BOOLEAN NOT NULL, 
	size BIGINT NOT NULL, 
	file_count INTEGER NOT NULL, 
	meta JSON NOT NULL, 
	created_at DATETIME NOT NULL, partial BOOLEAN DEFAULT 0 NOT NULL, 
	CONSTRAINT pk_revisions PRIMARY KEY (id), 
	CONSTRAINT fk_revisions_repo_id_repos FOREIGN KEY(repo_id) REFERENCES repos (id) ON DELETE CASCADE, 
	CONSTRAINT uq_revisions_repo_id_commit UNIQUE (repo_id, "commit")
);
CREATE INDEX ix_access_grants_token_id ON access_grants (token_id);
CREATE INDEX ix_access_log_at ON access_log (at);
CREATE INDEX ix_access_log_repo_at ON access_log (repo, at);
CREATE INDEX ix_access_log_token_at ON access_log (token, at);
CREATE INDEX ix_artifacts_recipe_key ON artifacts (recipe_key);
CREATE INDEX ix_events_at ON events (at);
CREATE INDEX ix_files_revision_id ON files (revision_id);
CREATE INDEX ix_files_sha256 ON files (sha256);
CREATE INDEX ix_refs_repo_id ON refs (repo_id);
CREATE INDEX ix_repo_names_repo_id ON repo_names (repo_id);
CREATE INDEX ix_repos_author_name ON repos (author, name);
CREATE INDEX ix_repos_downloads ON repos (downloads);
CREATE INDEX ix_repos_pipeline_tag_name ON repos (pipeline_tag, name);
CREATE INDEX ix_repos_updated_at ON repos (updated_at);
CREATE INDEX ix_revisions_commit ON revisions ("commit");
CREATE INDEX ix_revisions_repo_id ON revisions (repo_id);
