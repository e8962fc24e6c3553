-- The canvas's images and the GPU tasks run on them. The service writes them (as the table owner, which row-level
-- security does not restrict); the canvas front end reads them with Supabase's own client as `authenticated`,
-- and sees only its user's rows (https://supabase.com/docs/guides/database/postgres/row-level-security).
--
-- state: uploading (a presigned direct upload not yet confirmed) | pending (row written, object being written)
--        | ready | deleting (hidden; the object is being removed) | deleted (tombstone: no object any more).
-- Only `ready` rows have an object that belongs to them; reconcile removes what any failure left in between.
create table canvas_images (
  id            uuid primary key,
  owner         uuid not null,
  s3_key        text not null unique,
  name          text not null,
  content_type  text not null check (content_type in ('image/png', 'image/jpeg', 'image/webp')),
  bytes         bigint not null check (bytes >= 0),
  width         integer check (width > 0),
  height        integer check (height > 0),
  sha256        text check (sha256 ~ '^[0-9a-f]{64}$'),
  state         text not null check (state in ('uploading', 'pending', 'ready', 'deleting', 'deleted')),
  created_at    timestamptz not null default now(),
  deleted_at    timestamptz,
  check ((state in ('deleting', 'deleted')) = (deleted_at is not null)),
  check (state not in ('pending', 'ready') or (width is not null and height is not null and sha256 is not null))
);

-- GET /images: one owner's ready images, newest first, paged by (created_at, id).
create index canvas_images_owner_page on canvas_images (owner, created_at desc, id desc) where state = 'ready';
-- reconcile: unfinished and deleting rows.
create index canvas_images_unsettled on canvas_images (state, created_at) where state <> 'ready' and state <> 'deleted';

-- status: SUBMITTING until the orchestrator has answered with task_id, then the orchestrator's status.
create table canvas_image_tasks (
  id            uuid primary key,  -- also the orchestrator idempotency key of the submit
  image_id      uuid not null references canvas_images (id),
  owner         uuid not null,
  type          text not null,
  params        jsonb not null,
  task_id       text unique,
  status        text not null,
  result_uri    text,
  error         text,
  created_at    timestamptz not null default now(),
  updated_at    timestamptz not null default now(),
  check ((status = 'SUBMITTING') = (task_id is null))
);

create index canvas_image_tasks_image on canvas_image_tasks (image_id, created_at desc);
create index canvas_image_tasks_submitting on canvas_image_tasks (created_at) where status = 'SUBMITTING';

alter table canvas_images enable row level security;
alter table canvas_image_tasks enable row level security;

-- Read-only for the front end; `(select auth.uid())` is evaluated once per query rather than per row.
create policy "owners read their images" on canvas_images
  for select to authenticated using (owner = (select auth.uid()) and state = 'ready');
create policy "owners read their image tasks" on canvas_image_tasks
  for select to authenticated using (owner = (select auth.uid()));

grant select on canvas_images, canvas_image_tasks to authenticated;
revoke all on canvas_images, canvas_image_tasks from anon;
