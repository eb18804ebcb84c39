-- dmem for Neovim: starts dmem-lsp for the buffers you edit, passes your settings
-- through, and adds what LSP alone does not give Neovim: ghost text for inline
-- completions, a few commands, and opt-in forwarding of diagnostics as debug steps.
--
-- Neovim 0.11+: vim.lsp.enable('dmem') (lsp/dmem.lua) is all you need.
-- Any version from 0.7: require('dmem').setup(opts).
local compat = require('dmem.compat')

local M = {}

M.defaults = {
  -- how to start the server; flags such as --model or --device may follow
  cmd = { 'dmem-lsp' },
  -- nil: every buffer that holds a file; or a list of filetypes
  filetypes = nil,
  -- the workspace folder is the nearest directory above the file holding one of these
  root_markers = { '.dmem', '.git', '.hg', '.svn' },
  -- the server's settings (see :help dmem-settings), e.g. { completion = { maxTokens = 32 } }
  settings = {},
  ghost = {
    enabled = true,
    -- accepts the ghost text; falls back to its normal meaning when none is shown.
    -- false: map nothing, call require('dmem').accept() from your own mapping
    accept_key = '<Tab>',
    -- how long typing must pause before a completion is requested
    debounce_ms = 150,
  },
  -- send errors from every diagnostic source to the server's debug memory
  forward_diagnostics = false,
}

-- The options in force: setup()'s, else vim.g.dmem's, over the defaults.
M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), vim.g.dmem or {})
local set_up = false

-- What the server last said: dmem/status, and tokens per store per folder (dmem/memory).
M.status = { state = 'stopped', message = '' }
M.memory = {}
M.last_event = nil

local function fire(pattern)
  vim.api.nvim_exec_autocmds('User', { pattern = pattern, modeline = false })
end

M.handlers = {
  ['dmem/status'] = function(_, result)
    M.status = result or M.status
    if M.status.state == 'error' then
      vim.notify('dmem: ' .. (M.status.message or 'the model did not load') ..
        '\nRun `dmem-lsp doctor` in a terminal for hints.', vim.log.levels.ERROR)
    end
    fire('DmemStatus')
  end,
  ['dmem/memory'] = function(_, result)
    if type(result) == 'table' and result.folder then
      M.memory[result.folder] = result.tokens or {}
      M.last_event = result
      fire('DmemMemory')
    end
  end,
}

---The workspace folder of the file `path`: the nearest directory holding a root marker,
---else the current directory when the file is under it, else the file's own directory.
function M.root(path, markers)
  local dir = vim.fn.fnamemodify(path, ':p:h')
  local here = dir
  while true do
    for _, marker in ipairs(markers or M.options.root_markers) do
      if compat.uv.fs_stat(here .. '/' .. marker) then
        return here
      end
    end
    local parent = vim.fn.fnamemodify(here, ':h')
    if parent == here then
      break
    end
    here = parent
  end
  local cwd = vim.fn.getcwd()
  if dir == cwd or dir:sub(1, #cwd + 1) == cwd .. '/' then
    return cwd
  end
  return dir
end

function M.on_attach(client, bufnr)
  if not set_up then -- vim.lsp.enable('dmem'): vim.g.dmem as it is now
    M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), vim.g.dmem or {})
  end
  if M.options.ghost.enabled then
    require('dmem.ghost').attach(client, bufnr, M.options.ghost)
  end
end

local warned = {} -- programs already said to be missing

---True when `cmd` can start the server; otherwise say why, once per program (vim.notify),
---instead of a start that fails silently.
function M.check_cmd(cmd)
  local program = type(cmd) == 'table' and cmd[1] or nil
  if program == nil or vim.fn.executable(program) == 1 then
    return true
  end
  if not warned[program] then
    warned[program] = true
    local message = ('dmem: cannot start the server: `%s` is not an executable on PATH.\n'):format(program)
      .. 'Install dmem-lsp (scripts/setup in its repository) and put its .venv/bin on PATH, '
      .. 'or give the full path in cmd. See :checkhealth dmem'
    -- scheduled: an error raised inside the autocommands of :edit would stop the ones after it
    vim.schedule(function()
      vim.notify(message, vim.log.levels.ERROR)
    end)
  end
  return false
end

---The client configuration shared by lsp/dmem.lua and setup().
function M.lsp_config(options)
  options = options or M.options
  local section = options.settings
  if section == nil or vim.tbl_isempty(section) then
    section = vim.empty_dict() -- an object in JSON, not [] (an empty Lua table)
  end
  local settings = { dmem = section }
  return {
    name = 'dmem',
    cmd = options.cmd,
    filetypes = options.filetypes,
    root_markers = options.root_markers,
    settings = settings,
    init_options = settings,
    handlers = M.handlers,
    on_attach = function(client, bufnr)
      M.on_attach(client, bufnr)
    end,
  }
end

local function wanted(bufnr, options)
  if vim.bo[bufnr].buftype ~= '' or vim.api.nvim_buf_get_name(bufnr) == '' then
    return false
  end
  return options.filetypes == nil or vim.tbl_contains(options.filetypes, vim.bo[bufnr].filetype)
end

local started = {} -- 0.7: root directory -> client id

local function start(bufnr, options)
  if not wanted(bufnr, options) then
    return
  end
  if not M.check_cmd(options.cmd) then
    return
  end
  local root = M.root(vim.api.nvim_buf_get_name(bufnr), options.root_markers)
  local config = M.lsp_config(options)
  config.root_dir = root
  config.root_markers = nil
  config.workspace_folders = { { uri = vim.uri_from_fname(root), name = vim.fn.fnamemodify(root, ':t') } }
  if vim.lsp.start then -- 0.8+: reuses the client for this root
    vim.lsp.start(config, { bufnr = bufnr })
    return
  end
  local id = started[root]
  if id == nil or vim.lsp.get_client_by_id(id) == nil then
    id = vim.lsp.start_client(config)
    started[root] = id
  end
  if id then
    vim.lsp.buf_attach_client(bufnr, id)
  end
end

---Start dmem-lsp for every buffer you edit (all Neovim versions from 0.7).
---Use this or vim.lsp.enable('dmem'), not both.
function M.setup(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), vim.g.dmem or {}, opts or {})
  set_up = true
  local options = M.options
  local group = vim.api.nvim_create_augroup('dmem.setup', { clear = true })
  vim.api.nvim_create_autocmd({ 'BufReadPost', 'BufNewFile', 'FileType' }, {
    group = group,
    callback = function(event)
      start(event.buf, options)
    end,
  })
  for _, bufnr in ipairs(vim.api.nvim_list_bufs()) do
    if vim.api.nvim_buf_is_loaded(bufnr) then
      start(bufnr, options)
    end
  end
  require('dmem.forward').enable(options.forward_diagnostics)
end

---Accept the ghost text in the current buffer: true when there was one.
function M.accept()
  return require('dmem.ghost').accept(vim.api.nvim_get_current_buf())
end

---Tokens per store in the memory of `bufnr`'s workspace folder (nil before the first report).
function M.folder_memory(bufnr)
  local uri = vim.uri_from_bufnr(bufnr or 0)
  local best, tokens = nil, nil
  for folder, counts in pairs(M.memory) do
    if (uri == folder or uri:sub(1, #folder + 1) == folder .. '/') and (best == nil or #folder > #best) then
      best, tokens = folder, counts
    end
  end
  return tokens
end

---A short text for your statusline: "dmem ready 1.2k".
function M.statusline()
  if compat.client(0) == nil then
    return ''
  end
  local text = 'dmem ' .. (M.status.state or '')
  local tokens = M.folder_memory(0)
  if tokens then
    local total = 0
    for _, count in pairs(tokens) do
      total = total + count
    end
    text = text .. (total >= 1000 and string.format(' %.1fk', total / 1000) or (' ' .. total))
  end
  return text
end

return M
